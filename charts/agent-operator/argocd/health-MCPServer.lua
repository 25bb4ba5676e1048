-- Argo CD health of an MCPServer (agentoperator.io/v1alpha1).
-- Progressing until the operator has listed the tools of the current spec; Degraded when
-- its Ready condition says False (the server cannot be reached or refuses); Healthy else.
local hs = {status = "Progressing", message = "Waiting for the operator to list the tools"}
local status = obj.status
if status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  return hs
end
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      if condition.status == "False" then
        hs.status = "Degraded"
        hs.message = condition.message or condition.reason or "Not ready"
        return hs
      end
      if condition.status == "True" then
        hs.status = "Healthy"
        hs.message = (status.toolCount or 0) .. " tools"
        return hs
      end
    end
  end
end
return hs

-- Argo CD health of an AgentPool (agentoperator.io/v1alpha1).
-- Progressing until the operator reports on the current spec; Degraded when a Ready
-- condition says False; Healthy otherwise (a busy pool with queued steps is healthy).
local hs = {status = "Progressing", message = "Waiting for the operator to report the pool"}
local status = obj.status
if status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.message = "Waiting for the operator to see the latest spec"
  return hs
end
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" and condition.status == "False" then
      hs.status = "Degraded"
      hs.message = condition.message or condition.reason or "Not ready"
      return hs
    end
  end
end
hs.status = "Healthy"
hs.message = (status.running or 0) .. " running, " .. (status.queued or 0) .. " queued, capacity " .. (status.replicas or 0)
return hs

-- Argo CD health of an AgentTask (agentoperator.io/v1alpha1).
-- Healthy: Succeeded. Degraded: Failed or Cancelled. Suspended: waiting for a person's
-- approval, or spec.suspend. Progressing: everything else (planning, running, or a spec
-- change the operator has not seen yet).
local hs = {status = "Progressing", message = "Waiting for the operator to pick the task up"}
local spec = obj.spec or {}
local status = obj.status
if status == nil or status.phase == nil then
  if spec.suspend then
    hs.status = "Suspended"
    hs.message = "Suspended (spec.suspend)"
  end
  return hs
end

local function detail(text)
  if status.message ~= nil and status.message ~= "" then
    return text .. ": " .. status.message
  end
  return text
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = detail("Succeeded")
elseif phase == "Failed" or phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = detail(phase .. " (" .. (status.reason or "no reason") .. ")")
elseif phase == "WaitingApproval" then
  hs.status = "Suspended"
  if status.currentStep ~= nil and status.currentStep ~= "" then
    hs.message = "Waiting for approval of step " .. status.currentStep
  else
    hs.message = "Waiting for approval"
  end
elseif spec.suspend then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend): running steps finish, nothing new starts"
else
  local generation = obj.metadata and obj.metadata.generation
  if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
    hs.message = "Waiting for the operator to see the latest spec"
  elseif status.currentStep ~= nil and status.currentStep ~= "" then
    hs.message = phase .. ": " .. status.currentStep
  else
    hs.message = phase
  end
end
return hs

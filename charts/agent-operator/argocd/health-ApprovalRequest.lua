-- Argo CD health of an ApprovalRequest (agentoperator.io/v1alpha1).
-- Suspended: waiting for a person's decision. Healthy: approved. Degraded: rejected or
-- expired (the step does not run). Progressing: decided, not yet recorded by the operator.
local hs = {}
local spec = obj.spec or {}
local status = obj.status or {}
local phase = status.phase or "Pending"
local step = spec.stepId or "?"
local who = status.decidedBy or spec.decidedBy

local function by(text)
  if who ~= nil and who ~= "" then
    text = text .. " by " .. who
  end
  if spec.reason ~= nil and spec.reason ~= "" then
    text = text .. ": " .. spec.reason
  end
  return text
end

if phase == "Approved" then
  hs.status = "Healthy"
  hs.message = by("Step " .. step .. " approved")
elseif phase == "Rejected" then
  hs.status = "Degraded"
  hs.message = by("Step " .. step .. " rejected")
elseif phase == "Expired" then
  hs.status = "Degraded"
  hs.message = "Step " .. step .. ": no decision before " .. (spec.expiresAt or "the deadline")
elseif spec.decision ~= nil then
  hs.status = "Progressing"
  hs.message = by(spec.decision) .. "; waiting for the operator to record it"
else
  hs.status = "Suspended"
  local risk = spec.risk and spec.risk.level or "unknown"
  hs.message = "Waiting for a decision on step " .. step .. " (" .. (spec.tool or "?") .. ", risk " .. risk .. ")"
end
return hs

"""What LLM tokens cost: one price table for the planner and the LLM tools.

A pool whose model the table does not know (a local server, a newer model), or prices
differently, sets `spec.model.prices`; it reaches the step in `ModelSettings.prices`. A model
priced nowhere costs 0: tokens are always exact, the cost only as good as the prices.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PRICES", "Prices", "cost_usd"]


class Prices(BaseModel):
    """US dollars per million tokens of one model."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    input_per_million: float = Field(
        ge=0, alias="inputPerMillion", description="US dollars per million prompt tokens."
    )
    output_per_million: float = Field(
        ge=0, alias="outputPerMillion", description="US dollars per million completion tokens."
    )


# As OpenAI published them.
PRICES: dict[str, Prices] = {
    name: Prices(input_per_million=prompt, output_per_million=completion)
    for name, (prompt, completion) in {
        "gpt-4o": (2.50, 10.00),
        "gpt-4o-mini": (0.15, 0.60),
        "gpt-4.1": (2.00, 8.00),
        "gpt-4.1-mini": (0.40, 1.60),
        "gpt-4.1-nano": (0.10, 0.40),
    }.items()
}


def cost_usd(
    model: str, input_tokens: int, output_tokens: int, override: Prices | None = None
) -> float:
    """What the tokens of one completion cost: by `override`, else by the table, where a
    snapshot (`gpt-4o-2024-08-06`) is priced as its family."""
    prices = override
    if prices is None:
        family = [name for name in PRICES if model == name or model.startswith(name + "-")]
        if not family:
            return 0.0
        prices = PRICES[max(family, key=len)]
    spent = input_tokens * prices.input_per_million + output_tokens * prices.output_per_million
    return spent / 1_000_000

"""The example's tool: a price list. Served to asymre by scripts/pytools.py."""

PRICES = {"apple": 40, "pear": 55, "bread": 210, "milk": 95, "cheese": 480, "egg": 30,
          "rice": 150, "tea": 320, "soap": 125, "candle": 260}


def price(item: str) -> int:
    """The price of one item in the shop, in cents (e.g. item "apple")."""
    key = item.strip().lower()
    if key not in PRICES:
        raise ValueError("no item %r in the shop" % item)
    return PRICES[key]

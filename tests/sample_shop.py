"""The small tool-and-lighting shop several test modules build engines from."""

CATALOG = (
    "item_id,title,description,category,brand,price\n"
    "drill-1,Cordless Drill 20V,Brushless motor,Tools > Drills,Makita,99\n"
    "drill-2,Hammer Drill,Corded 800W,Tools > Drills,Bosch,79\n"
    "saw-1,Circular Saw,7-1/4 inch blade,Tools > Saws,Makita,129\n"
    "lamp-1,Desk Lamp,LED with dimmer,Home > Lighting,Ikea,25\n"
    "bulb-1,LED Bulb 4-pack,Warm white E27,Home > Lighting,Philips,12\n"
)

EVENTS = (
    "user_id,item_id,event,timestamp\n"
    "alice,drill-1,purchase,2024-01-01T10:00:00Z\n"
    "alice,saw-1,view,2024-01-02T10:00:00Z\n"
    "bob,drill-1,purchase,2024-01-03T10:00:00Z\n"
    "bob,drill-2,purchase,2024-01-03T11:00:00Z\n"
    "carol,drill-1,purchase,2024-01-04T10:00:00Z\n"
    "carol,lamp-1,add_to_cart,2024-01-04T11:00:00Z\n"
    "dave,bulb-1,purchase,2024-01-05T10:00:00Z\n"
)


def build_lexical_engine(root):  # type: ignore[no-untyped-def]
    """The sample shop built under ``root`` with lexical search only; returns the engine.

    For tests of the layers above the engine: the dense encoder would add a model load
    without changing what they check.
    """
    from shoplm.config import SearchConfig, ShoplmConfig
    from shoplm.engine import Engine

    (root / "catalog.csv").write_text(CATALOG, encoding="utf-8")
    (root / "events.csv").write_text(EVENTS, encoding="utf-8")
    config = ShoplmConfig(search=SearchConfig(dense=False))
    Engine.build(root / "catalog.csv", root / "engine", root / "events.csv", config)
    return root / "engine"

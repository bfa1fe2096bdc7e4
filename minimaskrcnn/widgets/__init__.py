"""ipywidgets explorers built on minimaskrcnn.viz; every callback is a plain function the tests call."""

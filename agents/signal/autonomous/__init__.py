"""The signal agent's autonomous loop: each tick turns a strategy's signal on the last
closed bar into at most one order, sized by risk and sent through execution (and so
through risk's and compliance's checks), with a deterministic client order id."""

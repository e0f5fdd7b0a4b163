"""The embedded shapes world on the model side: the `tiny-shapes` and `tiny-shapes-k22`
recipes, the judge, and the offline evaluation (`easel bootstrap`, `easel eval`). Uses the
engine for every image it generates; the engine never imports it."""

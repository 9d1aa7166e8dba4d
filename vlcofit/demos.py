"""The built-in demos by name (a light module: the CLI lists them without importing torch)."""

# demo -> the experiment config it trains once
DEMOS = {"classification": "demo", "localization": "demo_ava", "cofinetune": "cofinetune_demo"}
# demo -> the experiment config it runs as a sweep (setting x seed); "transfer" starts from the
# classification demo's run
SWEEP_DEMOS = {"granularity": "granularity_demo", "transfer": "transfer_demo",
               "zero-shot": "zeroshot_demo", "text4vis": "text4vis_demo"}

"""What a trial can minimize: ``--objective`` name -> the key of llama-perplexity's figure."""

OBJECTIVES = {"kld": "kld_mean", "kld99": "kld_p99", "ppl": "ppl"}

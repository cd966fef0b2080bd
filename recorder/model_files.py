"""The files of a model directory that parity reads or fetches besides the weights.

A leaf module: the model fetch (hubmodel) and the input resolution (inputs)
both name these files, and neither imports the other for them.
"""

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
    "merges.txt", "special_tokens_map.json", "added_tokens.json",
)

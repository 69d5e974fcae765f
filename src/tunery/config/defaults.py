"""The defaults that commands and library functions share with the config schema, in one place.

The schema (`config/schema.py`) takes its field defaults from here, and so do the command-line options
and function signatures that mirror a config key. Plain constants, so that the command line can read
them without importing pydantic.
"""

BASE_MODEL = "smollm2-135m-instruct"  # the embedded default model (models/embedded.py)
MAX_LENGTH = 1024  # data.max_length: longest example in tokens
MAX_NEW_TOKENS = 64  # eval.max_new_tokens: most tokens generated per answer
TRAIN_ON = "assistant"  # data.train_on
EVAL_BATCH_SIZE = 32  # prompts generated together by `tunery eval` and graders during training
# Without `training.eval_every`, validation runs 10 times a run, or less often where that would spend
# more than this share of the training compute on it (a small run with a large validation set).
VALIDATION_SHARE = 0.15
# Tokens one evaluation batch may hold, whatever its batch size, so that 32 short prompts go together
# and long ones a few at a time. Generating: rows x (the longest prompt + the new tokens), at most 16
# rows of max_length. A loss pass: its rows (padded: rows x the longest), at most the 8 rows of
# max_length that the batch of 8 held before.
GENERATE_TOKENS = 16 * MAX_LENGTH
LOSS_PASS_TOKENS = 8 * MAX_LENGTH
SHOTS = 3  # examples in few-shot and retrieval prompts
RETRIEVAL = "bm25"  # retrieval method of the baselines
INCLUDE = ("**/*.txt", "**/*.md")  # data.include: the files of a folder that are read
NEAR_DUPLICATE_THRESHOLD = 0.8  # data.near_duplicate_threshold: estimated Jaccard of word 5-grams

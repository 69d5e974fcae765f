"""`tunery generate` and `tunery chat`: answer prompts with a run folder or a base model.

Loading messages go to stderr so that `tunery generate --json` writes nothing but JSON on stdout.
"""

from __future__ import annotations

import json
import sys

from tunery.inference import answer_setup, generate_batch, load_for_inference

CHAT_HELP = "Type a message. /reset clears the history, /exit (or Ctrl-D) quits."


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _load(target: str):
    _log(f"loading {target} ...")
    return load_for_inference(target)


def conversation(prompt: str, system: str | None) -> list[dict]:
    """One user turn, after a system message when one is given (else the template's default)."""
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": prompt}]


def run_generate(
    target: str,
    prompts: list[str],
    system: str | None,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    as_json: bool,
    images: list[str] | None = None,
) -> int:
    """Answer each prompt in one batched call; print the answers, or a JSON list with `--json`.
    With `images` (or a vision run) each prompt is one user turn of the images then the text, answered
    by the model's processor (`tunery.vision.inference`)."""
    from tunery.vision.inference import is_vision_run

    if images or is_vision_run(target):
        from tunery.cli.vision_generate import generate_with_images

        answers = generate_with_images(target, prompts, images or [], system, max_new_tokens, temperature, seed, _log)
        return _print_answers(prompts, answers, as_json)
    model, tokenizer = _load(target)
    index, constraint = answer_setup(target)
    conversations = [conversation(p, system) for p in prompts]
    if index is not None:  # the run was trained with retrieved examples: it answers with them too
        conversations = [index.augment(c) for c in conversations]
    answers = generate_batch(
        model, tokenizer, conversations, max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed, **constrained(constraint),
    )
    return _print_answers(prompts, answers, as_json)


def _print_answers(prompts: list[str], answers: list[str], as_json: bool) -> int:
    if as_json:
        rows = [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        if len(prompts) > 1:
            print(f"{'' if i == 0 else chr(10)}>>> {prompt}")
        print(answer)
    return 0


def constrained(constraint) -> dict:
    """generate_batch's constraint option when the run has one (a run without passes nothing new)."""
    return {"constraint": constraint} if constraint is not None else {}


def _streamer(tokenizer):
    from transformers import TextStreamer

    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


class ChatSession:
    """A multi-turn history with one model; `reply` appends the user turn and the answer."""

    def __init__(self, model, tokenizer, system: str | None, max_new_tokens: int, temperature: float,
                 index=None, constraint=None):
        self.model, self.tokenizer = model, tokenizer
        self.index, self.constraint = index, constraint  # the run's retrieval and answer constraint
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.start = conversation("", system)[:-1]  # the system message alone, or nothing
        self.history: list[dict] = list(self.start)
        self.turns = 0  # seeds each sampled answer differently, yet repeatably

    def reset(self) -> None:
        """Forget every turn; the system message stays."""
        self.history = list(self.start)

    def reply(self, text: str, stream: bool = True) -> str:
        """The answer to `text` given the history so far (streamed to stdout when `stream`)."""
        messages = self.history + [{"role": "user", "content": text}]
        # Retrieved examples go into the prompt of this answer only; the history keeps the real turns.
        prompt = self.index.augment(messages) if self.index is not None else messages
        answer = generate_batch(
            self.model, self.tokenizer, [prompt], max_new_tokens=self.max_new_tokens,
            temperature=self.temperature, seed=self.turns,
            streamer=_streamer(self.tokenizer) if stream else None, **constrained(self.constraint),
        )[0]
        self.history = messages + [{"role": "assistant", "content": answer}]
        self.turns += 1
        return answer


def run_chat(target: str, system: str | None, max_new_tokens: int, temperature: float) -> int:
    """Read messages from stdin until /exit or end of input; stream each answer to stdout."""
    from tunery.errors import TuneryError
    from tunery.vision.inference import is_vision_run

    if is_vision_run(target):
        raise TuneryError(f"{target} is a vision run; tunery chat talks to text runs only", fix=f"ask about an image with "
                          f"tunery generate {target} --image PATH --prompt TEXT")
    model, tokenizer = _load(target)
    session = ChatSession(model, tokenizer, system, max_new_tokens, temperature, *answer_setup(target))
    _log(CHAT_HELP)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            session.reset()
            _log("(history cleared)")
            continue
        print("bot> ", end="", flush=True)
        # The streamer prints the answer as it is generated and ends it with a newline.
        session.reply(text, stream=True)

"""MGSM prompts per language: zero-shot chain-of-thought or direct, and few-shot as earlier chat turns."""

from __future__ import annotations

from dataclasses import dataclass

from cmaam.core.errors import CMAAMError
from eval.language import check_language_code
from eval.mgsm.exemplars import EXEMPLARS


@dataclass(frozen=True)
class PromptStyle:
    """The wording of one language: instructions, the question label and the answer sentence."""

    chain_of_thought: str
    direct: str
    question_label: str
    answer_sentence: str  # formatted with {answer}


STYLES = {
    "en": PromptStyle(
        chain_of_thought='Solve the following math problem step by step. At the end, write "The answer is N." '
                         "where N is the final number.",
        direct='Solve the following math problem. Reply only with "The answer is N." where N is the final number.',
        question_label="Question: ", answer_sentence="The answer is {answer}."),
    "ja": PromptStyle(
        chain_of_thought="次の算数の問題を段階的に解いてください。最後に「答えはNです。」と書いてください（Nは最終的な数値）。",
        direct="次の算数の問題を解いてください。「答えはNです。」とだけ答えてください（Nは最終的な数値）。",
        question_label="問題：", answer_sentence="答えは{answer}です。"),
    "zh": PromptStyle(
        chain_of_thought="请逐步解答下面的数学题。最后写出“答案是N。”，其中N是最终的数字。",
        direct="请解答下面的数学题。只回答“答案是N。”，其中N是最终的数字。",
        question_label="问题：", answer_sentence="答案是{answer}。"),
    "ko": PromptStyle(
        chain_of_thought='다음 수학 문제를 단계별로 풀어 주세요. 마지막에 "정답은 N입니다."라고 쓰세요(N은 최종 숫자).',
        direct='다음 수학 문제를 풀어 주세요. "정답은 N입니다."라고만 답하세요(N은 최종 숫자).',
        question_label="질문: ", answer_sentence="정답은 {answer}입니다."),
}
MAX_SHOTS = min(len(examples) for examples in EXEMPLARS.values())


def user_message(question: str, lang: str, chain_of_thought: bool = True) -> str:
    """The user turn for one question: the instruction, then the labelled question."""
    style = STYLES[check_language_code(lang)]
    instruction = style.chain_of_thought if chain_of_thought else style.direct
    return f"{instruction}\n\n{style.question_label}{question.strip()}"


def build_messages(question: str, lang: str, shots: int = 0, chain_of_thought: bool = True) -> list[dict]:
    """Chat messages for one MGSM question: ``shots`` worked exemplars as earlier turns, then the question.

    No system message (some chat templates, e.g. Mistral's, reject one); exemplar answers end with the
    language's answer sentence ("The answer is 27." / "答えは27です。" / "答案是27。" / "정답은 27입니다.").
    """
    style = STYLES[check_language_code(lang)]
    if not 0 <= shots <= MAX_SHOTS:
        raise CMAAMError(f"shots must be between 0 and {MAX_SHOTS}, got {shots}")
    messages: list[dict] = []
    for exemplar in EXEMPLARS[lang][:shots]:
        answer = style.answer_sentence.format(answer=exemplar.answer)
        reply = f"{exemplar.reasoning} {answer}" if chain_of_thought else answer
        messages.append({"role": "user", "content": user_message(exemplar.question, lang, chain_of_thought)})
        messages.append({"role": "assistant", "content": reply})
    messages.append({"role": "user", "content": user_message(question, lang, chain_of_thought)})
    return messages

"""The seed page's three conversation groups (1, 4 and 8 conversations), kept in the project."""
from __future__ import annotations

SMALL_BATCH_CONVERSATIONS = [
    [{"role": "user", "content": "What is the first letter of English alphabets?"}],
]
MEDIUM_BATCH_CONVERSATIONS = [
    [{"role": "user", "content": "Explain quantum computing in simple terms."}],
    [{"role": "user", "content": "What are the benefits of renewable energy?"}],
    [{"role": "user", "content": "Describe the process of photosynthesis."}],
    [{"role": "user", "content": "How does machine learning work?"}],
]
LARGE_BATCH_CONVERSATIONS = [
    [{"role": "user", "content": "What is the theory of relativity?"}],
    [{"role": "user", "content": "Explain blockchain technology."}],
    [{"role": "user", "content": "Describe climate change effects."}],
    [{"role": "user", "content": "How do neural networks learn?"}],
    [{"role": "user", "content": "What is genetic engineering?"}],
    [{"role": "user", "content": "Explain the water cycle."}],
    [{"role": "user", "content": "How does the internet work?"}],
    [{"role": "user", "content": "What is sustainable development?"}],
]
CHAT_QUESTIONS = ["What is the capital of France?", "What is 2 + 2?", "Name the three primary colors."]  # `bucketserve demo`'s
CONVERSATION_GROUPS = {
    "small": SMALL_BATCH_CONVERSATIONS,
    "medium": MEDIUM_BATCH_CONVERSATIONS,
    "large": LARGE_BATCH_CONVERSATIONS,
}


def all_prompts() -> list[str]:
    return [conv[0]["content"] for group in CONVERSATION_GROUPS.values() for conv in group]

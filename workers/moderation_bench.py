"""Cost per message of the moderation classifiers, batched as the worker batches them:
``python -m workers.moderation_bench`` (7 runs x 20 batches of 100 generated messages, a fifth spam).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time

from chatscale.wire import IngestMessage, dumps
from guilds.automod import Rules
from workers import spamdata
from workers.moderation import Item, RulesClassifier

rng = random.Random(1)
msgs = []
for i in range(100):
    text = spamdata.spam_message(rng) if i % 5 == 0 else spamdata.ham_message(rng)
    msgs.append(
        Item(
            IngestMessage(
                id=i,
                channel_id=1,
                guild_id=1,
                author_id=i,
                gateway_id="g",
                session_id="s",
                payload=dumps({"content": text}),
            ),
            text,
            Rules(keywords=("scam", "nitro*")),
            0,
        )
    )


async def main():
    for kind, model in (("rules", False), ("rules+model", True)):
        c = RulesClassifier(model=model)
        c.warm()
        runs = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(20):
                await c.score(msgs)
            runs.append((time.perf_counter() - t) / 2000 * 1e6)
        print(
            f"{kind}: median {statistics.median(runs):.1f} us/message (min {min(runs):.1f}, max {max(runs):.1f}; 7 runs x 20 batches of 100)"
        )


if __name__ == "__main__":
    asyncio.run(main())

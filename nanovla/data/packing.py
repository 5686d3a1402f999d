"""Training batches from data sets on disk: weighted sources, balanced by answer tokens, packed
into rows up to the context length, with a data position that a resumed run continues from.

- Each source is walked in a seeded permutation, one epoch after another; its cursor
  (epoch, index) is the data position. `state()` / `load_state()` save and restore it.
- A source's share of rows is weight / mean answer tokens, so `weight` is a share of *answer
  tokens* (a long caption and a one-word VQA answer count for what they teach), not of rows.
- The rows of one optimizer step are planned for the whole global batch (all ranks, all
  micro-steps) from text alone, with a generator seeded by (seed, step): every rank plans the
  same rows and keeps its own slice, so N ranks see exactly the rows one process would, and the
  cursors agree on every rank without exchanging anything.
- Images are decoded only by the rank that trains on them. A missing or corrupt image drops that
  example from its row and is counted (`skipped_images`); it never stops the run.
- Packing concatenates whole examples into a row (no attention masking between them, as
  nanochat/LLaVA-style packing does); an example longer than the context is cut at the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime.preprocess import ImageError, resize_uint8
from ..model.tokenizer import Tokenizer
from .dataset import to_pixels
from .formats import Record, Source, record_image


@dataclass
class Planned:
    source: int
    index: int  # record index in its source
    ids: list[int]
    mask: list[int]
    has_image: bool


class SourceMixture:
    def __init__(self, sources: list[tuple[Source, float]], tokenizer: Tokenizer, image_tokens: int, max_len: int,
                 height: int, width: int, seed: int = 0, pack: bool = True, log=None, workers: int = 1):
        if not sources:
            raise ValueError("no data sources")
        self.sources = [s for s, _ in sources]
        self.tok, self.image_tokens, self.max_len = tokenizer, image_tokens, max_len
        self.height, self.width, self.seed, self.pack = height, width, seed, pack
        self.cursors = [[0, 0] for _ in self.sources]  # (epoch, position) per source
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        self.skipped_images = 0
        self.examples = 0
        self.log = log
        self.workers, self._pool = workers, None
        rng = np.random.default_rng([seed, 99])
        means = []
        for s in self.sources:  # mean answer tokens of up to 200 records drawn from each source
            picks = rng.choice(len(s), size=min(200, len(s)), replace=False)
            means.append(max(1.0, float(np.mean([sum(self.render(s.records[i])[1]) for i in picks]))))
        weights = np.array([w / m for (_, w), m in zip(sources, means)], dtype=np.float64)
        if (weights <= 0).any():
            raise ValueError("source weights must be > 0")
        self.probs = weights / weights.sum()
        self.mean_answer_tokens = means

    # ------------------------------------------------------------------ position
    def state(self) -> dict:
        return {"cursors": [list(c) for c in self.cursors], "skipped_images": self.skipped_images,
                "examples": self.examples}

    def load_state(self, state: dict) -> None:
        if len(state["cursors"]) != len(self.sources):
            raise ValueError(f"saved data position has {len(state['cursors'])} sources, this run {len(self.sources)}")
        self.cursors = [list(c) for c in state["cursors"]]
        self.skipped_images = int(state.get("skipped_images", 0))
        self.examples = int(state.get("examples", 0))

    def _order(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k[0] != source}  # keep one epoch each
            self._orders[key] = np.random.default_rng([self.seed, source, epoch]).permutation(len(self.sources[source]))
        return self._orders[key]

    def _next(self, source: int) -> int:
        epoch, pos = self.cursors[source]
        order = self._order(source, epoch)
        index = int(order[pos])
        pos += 1
        if pos == len(order):
            epoch, pos = epoch + 1, 0
        self.cursors[source] = [epoch, pos]
        return index

    # ------------------------------------------------------------------ rows
    def render(self, record: Record) -> tuple[list[int], list[int]]:
        with_image = record.image is not None and self.image_tokens > 0
        r = self.tok.render(record.turns, self.image_tokens if with_image else 0)
        return r.ids, r.mask

    def plan(self, step: int, rows: int) -> list[list[Planned]]:
        """The examples of `rows` rows for this step (all ranks and micro-steps together)."""
        rng = np.random.default_rng([self.seed, step, 1])
        planned: list[list[Planned]] = []
        pending: Planned | None = None
        unusable = 0
        for _ in range(rows):
            row: list[Planned] = []
            used = 0
            while True:
                if unusable > 10_000:
                    raise ValueError("10000 examples in a row had nothing to train on (answers cut away by "
                                     "the context length?); raise max_seq_len or check the data")
                if pending is None:
                    s = int(rng.choice(len(self.sources), p=self.probs))
                    i = self._next(s)
                    ids, mask = self.render(self.sources[s].records[i])
                    record = self.sources[s].records[i]
                    if len(ids) > self.max_len:  # cut at the context, never inside the image tokens
                        if record.image is not None and self.image_tokens + 4 > self.max_len:
                            unusable += 1
                            continue
                        ids, mask = ids[: self.max_len], mask[: self.max_len]
                    if sum(mask[1:]) == 0:
                        unusable += 1
                        continue  # nothing to learn (answer cut away, or empty)
                    pending = Planned(s, i, ids, mask, record.image is not None and self.image_tokens > 0)
                if used + len(pending.ids) > self.max_len and row:
                    break  # the pending example opens the next row
                row.append(pending)
                used += len(pending.ids)
                pending = None
                if not self.pack:
                    break
            planned.append(row)
        self.examples += sum(len(r) for r in planned)
        # an example planned but not placed goes back to its source for the next step
        if pending is not None:
            s = pending.source
            epoch, pos = self.cursors[s]
            self.cursors[s] = [epoch, pos - 1] if pos > 0 else [epoch - 1, len(self.sources[s]) - 1]
        return planned

    def _decode(self, p: Planned) -> np.ndarray | ImageError:
        try:
            return resize_uint8(record_image(self.sources[p.source].records[p.index]), self.height, self.width)
        except ImageError as e:
            return e

    def materialize(self, rows: list[list[Planned]], pad_id: int):
        """(ids (B, T) int64, mask (B, T), pixels (n_images, 3, H, W) float32 or None), decoding images
        (in `workers` threads: OpenCV releases the GIL); an example whose image cannot be read is
        dropped from its row and counted."""
        wanted = [p for row in rows for p in row if p.has_image]
        if self.workers > 1 and len(wanted) > 1:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="nanovla-decode")
            decoded = dict(zip(map(id, wanted), self._pool.map(self._decode, wanted)))
        else:
            decoded = {id(p): self._decode(p) for p in wanted}
        kept_rows, images = [], []
        for row in rows:
            ids: list[int] = []
            mask: list[int] = []
            for p in row:
                if p.has_image:
                    image = decoded[id(p)]
                    if isinstance(image, ImageError):
                        self.skipped_images += 1
                        if self.log and self.skipped_images <= 20:
                            self.log(f"skipped an example: {image}")
                        continue
                    images.append(image)
                ids += p.ids
                mask += p.mask
            kept_rows.append((ids, mask))
        T = max(1, max(len(ids) for ids, _ in kept_rows))
        ids_arr = np.full((len(rows), T), pad_id, np.int64)
        mask_arr = np.zeros((len(rows), T), np.int64)
        for r, (ids, mask) in enumerate(kept_rows):
            ids_arr[r, : len(ids)] = ids
            mask_arr[r, : len(mask)] = mask
        pixels = None
        if images:
            pixels = to_pixels(np.stack(images))
        return ids_arr, mask_arr, pixels

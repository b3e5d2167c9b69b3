"""A deterministic synthetic recommendation world with a known (hidden) click model.

``make_world(cfg)`` builds, from ``cfg.seed`` alone:

* items (``cfg.n_items``, 5k for ``small``): a main topic (the ``category`` feature), a
  unit latent vector of ``cfg.latent_dim`` = topic centroid + creator offset + item-specific
  noise, a heavy-tailed (lognormal) popularity, a creator (each creator mostly one topic)
  and a price bucket (price quantiles, weakly topic dependent);
* users (``cfg.n_users``, 2k for ``small``): age bucket / region / device that weakly shift
  which topics they like, 2-4 interests (a topic mixture) and a long-term preference vector.

``World.sample_requests`` draws ranking requests: a user, a history drifting from the
user's interest mixture (older) to one current *session intent* (recent), and candidates
mixing popular items, items from the user's interests and items similar to specific
recent history items. The hidden click model is

    logit = a * <long-term pref, item vec>
          + b * max over the last RECENT_WINDOW history items of cos(history item vec, item vec)
          + c * centred log popularity
          + d * [candidate topic == session intent]
          + bias

with (a, b, c, d) = ``CLICK`` and the bias calibrated by ``make_world`` so the base click
rate is ``TARGET_CLICK_RATE`` (0.2) for every preset; ``labels ~ Bernoulli(sigmoid(logit))``,
``relevance = sigmoid(logit)``. The history term is the biggest source of signal: it needs
the item-specific vectors of individual recent history items, which a model attending over
the history can use but a single pooled user vector cannot. Click AUCs of the hidden
quantities on ``small`` train: full logit ~0.89, history max-sim alone ~0.87, cosine to the
mean of the recent history vectors ~0.81, long-term pref + popularity ~0.74, popularity ~0.65.
Generating ``small`` train (20k x 32) plus eval (300 x 256) requests takes ~2-3 s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace

import numpy as np

from export.config import WorldConfig
from serving import contract

logger = logging.getLogger(__name__)

RECENT_WINDOW = 16  # history items (most recent) that the history-similarity term looks at
MAX_INTERESTS = 4
TRAIN_SEED = 0  # sample_requests seeds of the train and eval splits (mixed with cfg.seed)
EVAL_SEED = 1

# Candidate sources (ClickComponents.candidate_source).
SOURCE_POPULAR, SOURCE_INTEREST, SOURCE_SIMILAR = 0, 1, 2
_SOURCE_PROBS = (0.35, 0.35, 0.30)
_SIMILAR_POOL = 32  # same-topic items scored against the anchor history item; the best becomes the candidate
_HISTORY_POOL = 3  # within-topic draws per history slot; the user's preferred one is consumed
TARGET_CLICK_RATE = 0.2  # make_world calibrates World.click_bias to this mean click probability


@dataclass(frozen=True)
class ClickWeights:
    """Weights of the hidden click model (see the module docstring); the bias is per world (World.click_bias)."""

    pref: float = 1.5
    history_sim: float = 9.0
    log_popularity: float = 0.6
    intent: float = 0.6


CLICK = ClickWeights()


@dataclass(frozen=True)
class Requests:
    """R ranking requests, each one user with a history and n candidates."""

    user_features: np.ndarray  # (R, F_U) int64 raw values in contract.USER_FEATURES order, user id first
    history_ids: np.ndarray  # (R, L_pad) int64 item ids, oldest first, zero-padded after history_len
    history_len: np.ndarray  # (R,) int64, 1 <= len <= L_pad <= contract.L_MAX
    candidate_ids: np.ndarray  # (R, n) int64 item ids
    candidate_features: np.ndarray  # (R, n, F_C) int64 raw values in contract.CANDIDATE_FEATURES order
    labels: np.ndarray  # (R, n) float32 observed clicks, 0/1
    relevance: np.ndarray  # (R, n) float32 ground truth gain for NDCG (true click probability)

    def __post_init__(self) -> None:
        r = self.user_features.shape[0]
        n = self.candidate_ids.shape[1] if self.candidate_ids.ndim == 2 else -1
        expected = {
            "user_features": (r, contract.F_U),
            "history_ids": (r, self.history_ids.shape[-1]),
            "history_len": (r,),
            "candidate_ids": (r, n),
            "candidate_features": (r, n, contract.F_C),
            "labels": (r, n),
            "relevance": (r, n),
        }
        for name, shape in expected.items():
            a = getattr(self, name)
            if a.shape != shape:
                raise ValueError(f"Requests.{name} must have shape {shape}, got {a.shape}")
        if r and not (1 <= self.history_len.min() and self.history_len.max() <= self.history_ids.shape[1]):
            raise ValueError(
                f"history_len must lie in 1..{self.history_ids.shape[1]}, "
                f"got {self.history_len.min()}..{self.history_len.max()}"
            )
        if self.history_ids.shape[1] > contract.L_MAX:
            raise ValueError(f"history length {self.history_ids.shape[1]} exceeds L_MAX={contract.L_MAX}")

    def __len__(self) -> int:
        return int(self.user_features.shape[0])

    @property
    def n_candidates(self) -> int:
        return int(self.candidate_ids.shape[1])

    def request_arrays(self, row: int) -> dict[str, np.ndarray]:
        """Row ``row`` as one public request (the ensemble's inputs), history unpadded."""
        n_hist = int(self.history_len[row])
        return {
            "user_features": self.user_features[row],
            "history_ids": np.ascontiguousarray(self.history_ids[row, :n_hist]),
            "candidate_ids": self.candidate_ids[row],
            "candidate_features": self.candidate_features[row],
        }

    def subset(self, idx: slice | np.ndarray) -> Requests:
        """Rows ``idx`` (slice, index array or boolean mask); history padding is trimmed to the
        longest history among them (so L_pad = max history_len holds for every batch)."""
        hl = self.history_len[idx]
        l_pad = int(hl.max()) if hl.size else 1
        return Requests(
            user_features=self.user_features[idx],
            history_ids=self.history_ids[idx][:, :l_pad],
            history_len=hl,
            candidate_ids=self.candidate_ids[idx],
            candidate_features=self.candidate_features[idx],
            labels=self.labels[idx],
            relevance=self.relevance[idx],
        )


@dataclass(frozen=True)
class ClickComponents:
    """Hidden per-candidate quantities of the click model for R x n candidates (tests, analysis)."""

    pref_affinity: np.ndarray  # (R, n) <user long-term pref, candidate vec>
    history_sim: np.ndarray  # (R, n) max cos sim to the last RECENT_WINDOW history items
    log_popularity: np.ndarray  # (R, n) log popularity, centred over the catalogue
    intent_match: np.ndarray  # (R, n) 1.0 where candidate topic == session intent
    logit: np.ndarray  # (R, n) the full click logit
    session_intent: np.ndarray  # (R,) topic of the request's session intent
    candidate_source: np.ndarray  # (R, n) SOURCE_POPULAR / SOURCE_INTEREST / SOURCE_SIMILAR


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _grouped_cdf(groups: np.ndarray, weights: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Members sorted by group, group offsets and a cdf where group g spans (g, g+1].

    ``searchsorted(cdf, g + u)`` with u ~ U(0, 1) then draws a member of g with
    probability proportional to its weight (the trick that vectorises per-group sampling).
    """
    order = np.argsort(groups, kind="stable")
    counts = np.bincount(groups, minlength=n_groups)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    w = weights[order].astype(np.float64)
    totals = np.bincount(groups[order], weights=w, minlength=n_groups)
    within = np.cumsum(w) - np.repeat(np.concatenate(([0.0], np.cumsum(totals)[:-1])), counts)
    cdf = groups[order] + within / np.repeat(np.where(totals > 0, totals, 1.0), counts)
    cdf[offsets[1:][counts > 0] - 1] = np.flatnonzero(counts > 0) + 1.0  # exact group ends
    return order, offsets, cdf


def _draw_in_group(
    rng: np.random.Generator, order: np.ndarray, cdf: np.ndarray, offsets: np.ndarray, group: np.ndarray
) -> np.ndarray:
    """One weighted member of each (non-empty) ``group`` entry; any shape."""
    u = rng.random(group.shape)
    u = np.minimum(u, 1.0 - 1e-12)
    pos = np.searchsorted(cdf, group + u, side="left")
    pos = np.clip(pos, offsets[group], offsets[group + 1] - 1)
    return order[pos]


@dataclass(frozen=True)
class World:
    """Items, users and the hidden click model. Build with ``make_world`` (which makes the arrays read-only)."""

    cfg: WorldConfig
    topic_centroids: np.ndarray  # (n_topics, d) unit
    item_topic: np.ndarray  # (n_items,) int64 = category
    item_creator: np.ndarray  # (n_items,) int64
    item_price_bucket: np.ndarray  # (n_items,) int64
    item_vec: np.ndarray  # (n_items, d) float32 unit
    popularity: np.ndarray  # (n_items,) float64, sums to 1 (prior popularity)
    creator_topic: np.ndarray  # (n_creators,) int64
    user_age: np.ndarray  # (n_users,) int64
    user_region: np.ndarray  # (n_users,) int64
    user_device: np.ndarray  # (n_users,) int64
    user_interests: np.ndarray  # (n_users, MAX_INTERESTS) int64 topics, distinct
    user_interest_weights: np.ndarray  # (n_users, MAX_INTERESTS) float64, rows sum to 1, 0 for unused slots
    user_pref: np.ndarray  # (n_users, d) float32 unit long-term preference
    user_activity: np.ndarray  # (n_users,) float64 request probability, sums to 1
    topic_order: np.ndarray  # items sorted by topic
    topic_offsets: np.ndarray  # (n_topics + 1,) offsets into topic_order
    topic_pop_cdf: np.ndarray  # popularity cdf within topic, topic t spans (t, t+1]
    click_bias: float = 0.0  # the click model's bias, calibrated by make_world to TARGET_CLICK_RATE

    @property
    def log_popularity(self) -> np.ndarray:
        """(n_items,) log popularity centred over the catalogue (the click model's popularity input)."""
        lp = np.log(self.popularity)
        return lp - lp.mean()

    @property
    def train_seed(self) -> int:
        return TRAIN_SEED

    @property
    def eval_seed(self) -> int:
        return EVAL_SEED

    def item_features(self, item_ids: np.ndarray) -> np.ndarray:
        """Raw candidate features (..., F_C) int64 in contract.CANDIDATE_FEATURES order."""
        ids = np.asarray(item_ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.cfg.n_items):
            raise ValueError(f"item ids must lie in 0..{self.cfg.n_items - 1}, got {ids.min()}..{ids.max()}")
        return np.stack([self.item_topic[ids], self.item_creator[ids], self.item_price_bucket[ids]], axis=-1).astype(
            np.int64
        )

    def user_features(self, user_ids: np.ndarray) -> np.ndarray:
        """Raw user features (..., F_U) int64 in contract.USER_FEATURES order."""
        u = np.asarray(user_ids)
        return np.stack([u, self.user_age[u], self.user_region[u], self.user_device[u]], axis=-1).astype(np.int64)

    def train_requests(self) -> Requests:
        """cfg.train_requests x cfg.train_candidates requests from the train seed."""
        return self.sample_requests(self.cfg.train_requests, self.cfg.train_candidates, TRAIN_SEED)

    def eval_requests(self) -> Requests:
        """cfg.eval_requests x cfg.eval_candidates requests from the (different) eval seed."""
        return self.sample_requests(self.cfg.eval_requests, self.cfg.eval_candidates, EVAL_SEED)

    def sample_requests(self, n_requests: int, n_candidates: int, seed: int) -> Requests:
        """``n_requests`` requests of ``n_candidates`` each; deterministic in (cfg.seed, seed)."""
        return self.sample_requests_with_truth(n_requests, n_candidates, seed)[0]

    def sample_requests_with_truth(
        self, n_requests: int, n_candidates: int, seed: int
    ) -> tuple[Requests, ClickComponents]:
        """Like ``sample_requests`` and also return the hidden click-model quantities."""
        if n_requests < 1:
            raise ValueError(f"n_requests must be >= 1, got {n_requests}")
        if not 1 <= n_candidates <= contract.N_MAX:
            raise ValueError(f"n_candidates must lie in 1..{contract.N_MAX}, got {n_candidates}")
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, 1, seed]))
        req, comp = self._sample(rng, n_requests, n_candidates)
        logger.debug(
            "sampled %d x %d requests (seed %d): click rate %.3f", n_requests, n_candidates, seed, req.labels.mean()
        )
        return req, comp

    # -- internals ---------------------------------------------------------------------------

    def _sample(self, rng: np.random.Generator, r: int, n_candidates: int) -> tuple[Requests, ClickComponents]:
        cfg = self.cfg

        users = rng.choice(cfg.n_users, size=r, p=self.user_activity)
        weights = self.user_interest_weights[users]
        interests = self.user_interests[users]
        intent_slot = _choose_rows(rng, weights)
        intent = interests[np.arange(r), intent_slot]

        history_ids, history_len = self._sample_histories(rng, users, interests, weights, intent)
        cand, source = self._sample_candidates(rng, users, interests, weights, history_ids, history_len, n_candidates)

        comp = self._click_components(users, history_ids, history_len, cand, intent, source)
        p = _sigmoid(comp.logit)
        labels = (rng.random(p.shape) < p).astype(np.float32)
        req = Requests(
            user_features=self.user_features(users),
            history_ids=history_ids,
            history_len=history_len,
            candidate_ids=cand,
            candidate_features=self.item_features(cand),
            labels=labels,
            relevance=p.astype(np.float32),
        )
        return req, comp

    def _topic_items(self, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
        """A popularity-weighted item of each topic in ``topics`` (any shape)."""
        return _draw_in_group(rng, self.topic_order, self.topic_pop_cdf, self.topic_offsets, topics)

    def _sample_histories(
        self,
        rng: np.random.Generator,
        users: np.ndarray,
        interests: np.ndarray,
        weights: np.ndarray,
        intent: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        r = users.shape[0]
        lengths = rng.integers(cfg.history_min, cfg.history_max + 1, size=r)
        l_pad = int(lengths.max())
        pos = np.arange(l_pad)[None, :]
        valid = pos < lengths[:, None]
        from_end = lengths[:, None] - 1 - pos  # 0 = most recent
        recent = from_end < np.maximum(2, np.ceil(0.35 * lengths))[:, None]

        # Older slots follow the interest mixture; recent ones mostly the session intent; a few explore.
        mix_topic = interests[np.arange(r)[:, None], _choose_rows(rng, weights, l_pad)]
        topic = np.where(recent & (rng.random((r, l_pad)) < 0.8), intent[:, None], mix_topic)
        explore = rng.random((r, l_pad)) < 0.05
        topic = np.where(explore, self.item_topic[rng.choice(cfg.n_items, size=(r, l_pad), p=self.popularity)], topic)

        # Of a few popularity-weighted draws in the topic, the user consumes the one they prefer.
        draws = self._topic_items(rng, np.repeat(topic[..., None], _HISTORY_POOL, axis=-1))
        affinity = np.einsum("rlpd,rd->rlp", self.item_vec[draws], self.user_pref[users])
        pick = np.argmax(4.0 * affinity + rng.gumbel(size=affinity.shape), axis=-1)
        items = np.take_along_axis(draws, pick[..., None], axis=-1)[..., 0]
        return np.where(valid, items, 0).astype(np.int64), lengths.astype(np.int64)

    def _sample_candidates(
        self,
        rng: np.random.Generator,
        users: np.ndarray,
        interests: np.ndarray,
        weights: np.ndarray,
        history_ids: np.ndarray,
        history_len: np.ndarray,
        n: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        r = users.shape[0]
        source = rng.choice(3, size=(r, n), p=_SOURCE_PROBS).astype(np.int8)
        cand = rng.choice(cfg.n_items, size=(r, n), p=self.popularity)

        is_int = source == SOURCE_INTEREST
        rows = np.nonzero(is_int)[0]
        topic = interests[rows, _choose_rows(rng, weights[rows])]
        cand[is_int] = self._topic_items(rng, topic)

        is_sim = source == SOURCE_SIMILAR
        rows = np.nonzero(is_sim)[0]
        window = np.minimum(history_len[rows], RECENT_WINDOW)
        anchor_pos = history_len[rows] - 1 - (rng.random(rows.size) * window).astype(np.int64)
        anchors = history_ids[rows, anchor_pos]
        cand[is_sim] = self._similar_items(rng, anchors)
        if n <= cfg.n_items // 2:
            _dedupe_rows(rng, cand, source, cfg.n_items)
        return cand.astype(np.int64), source

    def _similar_items(self, rng: np.random.Generator, anchors: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """For each anchor, the most similar of _SIMILAR_POOL random same-topic items (never the anchor)."""
        out = np.empty_like(anchors)
        for s in range(0, anchors.size, chunk):
            a = anchors[s : s + chunk]
            t = self.item_topic[a]
            pool = self._topic_items(rng, np.repeat(t[:, None], _SIMILAR_POOL, axis=1))
            sim = np.einsum("apd,ad->ap", self.item_vec[pool], self.item_vec[a])
            sim = np.where(pool == a[:, None], -np.inf, sim)
            best = np.take_along_axis(pool, np.argmax(sim, axis=1)[:, None], axis=1)[:, 0]
            out[s : s + chunk] = np.where(np.isneginf(sim.max(axis=1)), a, best)
        return out

    def _click_components(
        self,
        users: np.ndarray,
        history_ids: np.ndarray,
        history_len: np.ndarray,
        cand: np.ndarray,
        intent: np.ndarray,
        source: np.ndarray,
    ) -> ClickComponents:
        cv = self.item_vec[cand]  # (R, n, d)
        pref = np.einsum("rnd,rd->rn", cv, self.user_pref[users])
        w = np.arange(RECENT_WINDOW)[None, :]
        hpos = history_len[:, None] - RECENT_WINDOW + w
        hvalid = hpos >= 0
        hvec = self.item_vec[np.take_along_axis(history_ids, np.maximum(hpos, 0), axis=1)]  # (R, W, d)
        sims = np.einsum("rnd,rwd->rnw", cv, hvec)
        hsim = np.where(hvalid[:, None, :], sims, -np.inf).max(axis=-1)
        logpop = self.log_popularity[cand]
        match = (self.item_topic[cand] == intent[:, None]).astype(np.float64)
        logit = (
            CLICK.pref * pref
            + CLICK.history_sim * hsim
            + CLICK.log_popularity * logpop
            + CLICK.intent * match
            + self.click_bias
        )
        return ClickComponents(
            pref_affinity=pref.astype(np.float32),
            history_sim=hsim.astype(np.float32),
            log_popularity=logpop.astype(np.float32),
            intent_match=match.astype(np.float32),
            logit=logit.astype(np.float32),
            session_intent=intent.astype(np.int64),
            candidate_source=source,
        )


def _dedupe_rows(rng: np.random.Generator, cand: np.ndarray, source: np.ndarray, n_items: int) -> None:
    """Make each row's candidates distinct, in place: a ranking request lists an item once.

    Later copies of an item are redrawn uniformly from the catalogue (source becomes
    SOURCE_POPULAR, the "anything" source) until no row repeats; uniform draws make this
    converge in a few rounds when n <= n_items / 2 (the caller's condition).
    """
    while True:
        order = np.argsort(cand, axis=1, kind="stable")  # (R, n): copies end up adjacent
        ranked = np.take_along_axis(cand, order, axis=1)
        repeat_sorted = np.zeros(cand.shape, dtype=bool)
        repeat_sorted[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
        repeat = np.zeros_like(repeat_sorted)
        np.put_along_axis(repeat, order, repeat_sorted, axis=1)
        if not repeat.any():
            return
        cand[repeat] = rng.integers(0, n_items, int(repeat.sum()))
        source[repeat] = SOURCE_POPULAR


def _choose_rows(rng: np.random.Generator, probs: np.ndarray, size: int | None = None) -> np.ndarray:
    """Per row of ``probs`` (R, K), a column index drawn from that row (``size`` draws per row if given)."""
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    shape = (probs.shape[0],) if size is None else (probs.shape[0], size)
    u = rng.random(shape)
    if size is None:
        idx = (u[:, None] >= cdf).sum(axis=1)
    else:
        idx = (u[:, :, None] >= cdf[:, None, :]).sum(axis=2)
    return np.minimum(idx, probs.shape[1] - 1)


def _validate(cfg: WorldConfig) -> None:
    positive = (
        "n_users",
        "n_items",
        "n_creators",
        "n_topics",
        "latent_dim",
        "n_age_buckets",
        "n_regions",
        "n_devices",
        "n_price_buckets",
        "history_min",
        "train_requests",
        "train_candidates",
        "eval_requests",
        "eval_candidates",
    )
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"WorldConfig.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.n_items < cfg.n_topics:
        raise ValueError(f"WorldConfig.n_items ({cfg.n_items}) must be >= n_topics ({cfg.n_topics})")
    if not cfg.history_min <= cfg.history_max <= contract.L_MAX:
        raise ValueError(
            f"need 1 <= history_min ({cfg.history_min}) <= history_max ({cfg.history_max}) <= L_MAX ({contract.L_MAX})"
        )
    for name in ("train_candidates", "eval_candidates"):
        if getattr(cfg, name) > contract.N_MAX:
            raise ValueError(f"WorldConfig.{name} ({getattr(cfg, name)}) exceeds N_MAX ({contract.N_MAX})")


def make_world(cfg: WorldConfig) -> World:
    """Build the world deterministically from ``cfg`` (``cfg.seed``); ~0.1 s for ``small``."""
    _validate(cfg)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
    d, n_t = cfg.latent_dim, cfg.n_topics

    centroids = _normalize(rng.normal(size=(n_t, d)))
    topic_share = rng.dirichlet(np.full(n_t, 4.0))

    # Creators: each has a home topic (all topics covered when n_creators >= n_topics) and a size.
    creator_topic = rng.permutation(np.arange(cfg.n_creators) % n_t).astype(np.int64)
    creator_size = rng.lognormal(0.0, 1.0, size=cfg.n_creators)
    creator_pop = rng.normal(size=cfg.n_creators)
    creator_vec = rng.normal(size=(cfg.n_creators, d)) / np.sqrt(d)

    # Items: every topic gets at least one item; creators mostly publish in their home topic.
    item_topic = np.concatenate((np.arange(n_t), rng.choice(n_t, size=cfg.n_items - n_t, p=topic_share)))
    item_topic = rng.permutation(item_topic).astype(np.int64)
    c_order, c_offsets, c_cdf = _grouped_cdf(creator_topic, creator_size, n_t)
    has_creator = np.diff(c_offsets)[item_topic] > 0
    home = _draw_in_group(rng, c_order, c_cdf, c_offsets, np.where(has_creator, item_topic, 0))
    anyone = rng.choice(cfg.n_creators, size=cfg.n_items, p=creator_size / creator_size.sum())
    item_creator = np.where(has_creator & (rng.random(cfg.n_items) < 0.9), home, anyone).astype(np.int64)

    noise = rng.normal(size=(cfg.n_items, d)) / np.sqrt(d)
    item_vec = _normalize(centroids[item_topic] + 0.5 * creator_vec[item_creator] + 1.4 * noise).astype(np.float32)

    log_pop = 1.2 * rng.normal(size=cfg.n_items) + 0.4 * creator_pop[item_creator]
    popularity = np.exp(log_pop - log_pop.max())
    popularity /= popularity.sum()

    price = rng.normal(size=n_t)[item_topic] * 0.7 + rng.normal(size=cfg.n_items)
    edges = np.quantile(price, np.linspace(0, 1, cfg.n_price_buckets + 1)[1:-1])
    item_price_bucket = np.searchsorted(edges, price, side="right").astype(np.int64)

    # Users: demographics shift topic tastes a little; interests are distinct topics (Gumbel top-k).
    n_u = cfg.n_users
    user_age = rng.integers(cfg.n_age_buckets, size=n_u)
    user_region = rng.integers(cfg.n_regions, size=n_u)
    user_device = rng.choice(cfg.n_devices, size=n_u, p=rng.dirichlet(np.full(cfg.n_devices, 3.0)))
    taste = (
        np.log(topic_share)[None, :]
        + 0.8 * rng.normal(size=(cfg.n_age_buckets, n_t))[user_age]
        + 0.4 * rng.normal(size=(cfg.n_regions, n_t))[user_region]
        + 0.5 * rng.normal(size=(cfg.n_devices, n_t))[user_device]
    )
    k = min(MAX_INTERESTS, n_t)
    ranked = np.argsort(-(taste + rng.gumbel(size=taste.shape)), axis=1)[:, :k]
    interests = np.zeros((n_u, MAX_INTERESTS), dtype=np.int64)
    interests[:, :k] = ranked
    n_interests = np.minimum(rng.integers(2, MAX_INTERESTS + 1, size=n_u), k)
    used = np.arange(MAX_INTERESTS)[None, :] < n_interests[:, None]
    w = rng.gamma(2.0, size=(n_u, MAX_INTERESTS)) * used
    interest_weights = w / w.sum(axis=1, keepdims=True)
    pref = np.einsum("uk,ukd->ud", interest_weights, centroids[interests])
    pref += 0.6 * rng.normal(size=(n_u, d)) / np.sqrt(d)
    user_pref = _normalize(pref).astype(np.float32)
    activity = rng.lognormal(0.0, 0.7, size=n_u)

    t_order, t_offsets, t_cdf = _grouped_cdf(item_topic, popularity, n_t)
    world = World(
        cfg=cfg,
        topic_centroids=centroids.astype(np.float32),
        item_topic=item_topic,
        item_creator=item_creator,
        item_price_bucket=item_price_bucket,
        item_vec=item_vec,
        popularity=popularity,
        creator_topic=creator_topic,
        user_age=user_age.astype(np.int64),
        user_region=user_region.astype(np.int64),
        user_device=user_device.astype(np.int64),
        user_interests=interests,
        user_interest_weights=interest_weights,
        user_pref=user_pref,
        user_activity=activity / activity.sum(),
        topic_order=t_order.astype(np.int64),
        topic_offsets=t_offsets.astype(np.int64),
        topic_pop_cdf=t_cdf,
    )
    # Calibrate the click bias on a private sample so the base click rate is TARGET_CLICK_RATE for any preset.
    calib_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2]))
    _, comp = world._sample(calib_rng, 1_000, cfg.train_candidates)
    bias = _solve_bias(comp.logit.astype(np.float64), TARGET_CLICK_RATE)
    world = replace(world, click_bias=bias)
    for f in fields(world):
        value = getattr(world, f.name)
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    logger.debug(
        "made world: %d users, %d items, %d topics (seed %d), click bias %.3f", n_u, cfg.n_items, n_t, cfg.seed, bias
    )
    return world


def _solve_bias(logits: np.ndarray, target: float) -> float:
    """The b with mean(sigmoid(logits + b)) == target (bisection; the mean is increasing in b)."""
    lo, hi = -50.0, 50.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _sigmoid(logits + mid).mean() < target:
            lo = mid
        else:
            hi = mid
    return round(0.5 * (lo + hi), 6)

"""Multi30k (WMT multimodal task 1): which split has which language, and the upstream files
with their checksums, so a user without a local copy downloads exactly the text that
published results used (multi30k/dataset, branch master, pinned commit; see
../shared/data/multi30k/SOURCE.md).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import urllib.error
import urllib.request
from pathlib import Path

from ..atomic import atomic_write
from ..errors import ConfigError, CorpusError

log = logging.getLogger("attnlab")

COMMIT = "a3d2e0d26b56f3846f66a952536ffed4e401d05a"
BASE_URL = f"https://raw.githubusercontent.com/multi30k/dataset/{COMMIT}/data/task1/raw"

# split -> (lines, languages). The 2017 test sets have no Czech.
SPLITS: dict[str, tuple[int, tuple[str, ...]]] = {
    "train": (29000, ("en", "de", "fr", "cs")),
    "val": (1014, ("en", "de", "fr", "cs")),
    "test_2016_flickr": (1000, ("en", "de", "fr", "cs")),
    "test_2017_flickr": (1000, ("en", "de", "fr")),
    "test_2017_mscoco": (461, ("en", "de", "fr")),
    "test_2018_flickr": (1071, ("en", "de", "fr", "cs")),
}
LANGUAGES = ("en", "de", "fr", "cs")

# sha256 of each gunzipped file (SOURCE.md).
SHA256 = {
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.fr": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "train.cs": "2be68b38c8d586ff4f54eb13cc6e1baaaa053695b3f070d3038303a47f2268da",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.fr": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
    "val.cs": "d53827e469b0a1ca8d57e9e26b2b64c4bc4b33f5479c7b03ae87ae5c882c3e33",
    "test_2016_flickr.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test_2016_flickr.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test_2016_flickr.fr": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
    "test_2016_flickr.cs": "45adb85f688de8407fddcbe1b36dca15d12aab868149b337e2576f2d6d2ff8d8",
    "test_2017_flickr.en": "ce1450ddc5ab0834502579d77a170849952e15a2938b34cc503bdc25ebb4fb98",
    "test_2017_flickr.de": "c3078bc3b36808bf9d20eb2347ed6137016179ef59ec0d2b9b8ecc3fb2880081",
    "test_2017_flickr.fr": "6f3764e31dac41e9455e612958bcfd4e877c5e15cd66df2c2b2be6d9bd83e5b6",
    "test_2017_mscoco.en": "43051fdfa86fd5395182e718a94ca67b1b227b9f7c79596ff0f6b813216981d2",
    "test_2017_mscoco.de": "58277df3c75f92f7145a11b910b553d1cf82c439249d4dc237c899609eafac22",
    "test_2017_mscoco.fr": "39cde3f43f32b0a6bf29ce4917a46329ff32e53070c2fac87506695a740ae0a0",
    "test_2018_flickr.en": "4e585c2dd525911a6ea7730e9d0b516239af3f1b1ffae6a2130223cfb639f25e",
    "test_2018_flickr.de": "39fcc8b3331d76fb42d648d019c6898b0d5e58baac87bc2a0bb93f44ec8db207",
    "test_2018_flickr.fr": "234b4a887da0da4801a3e2c6f21336231ff7dd46daeb80cfa1b551c8bbb78239",
    "test_2018_flickr.cs": "1db59fe6980c9b3f9bade65122a985e71150214837d76f4768a5a8384c0b2dc7",
}


def check_selection(splits: dict[str, str], src_lang: str, tgt_lang: str) -> None:
    """Refuse a language or split Multi30k does not have, naming the config key."""
    for key, lang in (("data.src_lang", src_lang), ("data.tgt_lang", tgt_lang)):
        if lang not in LANGUAGES:
            raise ConfigError(f"{key}={lang!r}: Multi30k has the languages {list(LANGUAGES)}")
    if src_lang == tgt_lang:
        raise ConfigError(f"data.src_lang and data.tgt_lang are both {src_lang!r}; choose two languages")
    for role, name in splits.items():
        if name not in SPLITS:
            raise ConfigError(f"data.splits.{role}={name!r}: Multi30k splits are {list(SPLITS)}")
        missing = [lang for lang in (src_lang, tgt_lang) if lang not in SPLITS[name][1]]
        if missing:
            raise ConfigError(
                f"data.splits.{role}={name!r} has no {'/'.join(missing)} text (it has {list(SPLITS[name][1])}); "
                "choose another split or language pair"
            )


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(name: str, cache_dir: Path, base_url: str = BASE_URL) -> Path:
    """`{cache_dir}/{name}`, downloaded once from `{base_url}/{name}.gz` and checked against SHA256."""
    path = cache_dir / name
    expected = SHA256[name]
    if path.is_file():
        if sha256_of(path) != expected:
            raise CorpusError(f"{path}: checksum mismatch with the pinned Multi30k file; delete it to download again")
        return path
    url = f"{base_url}/{name}.gz"
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = gzip.decompress(response.read())
    except (urllib.error.URLError, OSError, EOFError) as err:
        raise CorpusError(
            f"cannot download {url} ({err}); check the connection, or point data.root at a local Multi30k copy"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CorpusError(
            f"{name}: checksum mismatch for {url} (sha256 {actual}, expected {expected}); "
            "the download is corrupt or the upstream file changed. Nothing was saved."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    return path


def ensure_local(cache_dir: Path, splits: list[str], langs: list[str], base_url: str = BASE_URL) -> Path:
    """Download (once) the files the run needs; -> the folder that holds them."""
    folder = cache_dir / "multi30k" / COMMIT[:12]
    for split in splits:
        for lang in langs:
            fetch(f"{split}.{lang}", folder, base_url)
    return folder

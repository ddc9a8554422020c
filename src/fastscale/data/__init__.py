"""Data: per-domain tokenizers, memory-mapped token shards with a document index, packing of documents
into rows with their boundaries, and the bundled demo data (scikit-learn's digits and sample photos)."""

from .packing import IGNORE_INDEX, PACKINGS, PackedRows, WholeDocumentRows, collate, has_rows, pack_rows, row_order, rows_for
from .prepare import DOMAINS, build, labelled_split, load, prepare
from .shards import MemoryShard, TokenShard, write_shard
from .tokenizers import ByteTokenizer, ImageCaptionTokenizer, ImageTokenizer, VideoTokenizer, tokenizer_from_dict

__all__ = [
    "DOMAINS", "IGNORE_INDEX", "PACKINGS", "ByteTokenizer", "ImageCaptionTokenizer", "ImageTokenizer", "MemoryShard", "PackedRows",
    "TokenShard", "VideoTokenizer", "WholeDocumentRows", "build", "collate", "has_rows", "labelled_split", "load", "pack_rows", "prepare", "row_order",
    "rows_for", "tokenizer_from_dict", "write_shard",
]

from attnmt.models.base import Seq2Seq

__all__ = ["Seq2Seq"]

"""The batch job behind `imgvec embed`: plan shards of inputs, one Spark task per shard reads, computes and writes its
part.
"""

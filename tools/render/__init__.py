"""``teacache-render``: resumable batch rendering of a JSONL job file, in one process or on Ray.

Modules, in the order a render uses them: ``jobs`` (parse and check job lines), ``artifacts``
(export on first use), ``batching`` (compatible jobs, same batches on every run), ``worker``
(a loaded pipeline renders a batch; ``encode`` turns outputs into bytes), ``pool`` /
``ray_pool`` (where batches run), ``output`` (lock, atomic files, results.jsonl), ``progress``
(bar and summary), ``sheet`` (contact sheet), ``cli``; ``bench`` measures batching.
"""

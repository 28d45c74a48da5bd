"""The distributed mode on Kafka: ingest writes normalized events to a topic keyed by actor DID, exactly once.

``skyattr ingest --to-kafka`` (:mod:`.kafka_ingest`) turns any source into records of ``skyattr.events``
(:mod:`.event_records`), the source's cursor committed in the same Kafka transaction as the events it covers.
"""

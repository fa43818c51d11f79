// Package storage is latchkey's shard service. An instance serves a set of
// shards; each shard is one JetStream KV bucket (subjects.Set.ShardBucket,
// stream KV_<bucket>, history 1, file storage, LimitMarkerTTL set so that
// per-message TTLs work) plus an in-memory, ordered view of it. The router
// sends protobuf requests on <prefix>.shard.<id>.{get,put,delete,scan}; the
// endpoints of one shard share the queue group latchkey-shard-<id>, so any
// number of instances may serve the same shard.
//
// Keys. A user key is stored under $KV.<bucket>.<base64url(key)>, so no raw
// key ever becomes a subject token. The revision of a key is its own and
// travels with it between shards: revision.go says how it is stored and
// why it only grows.
//
// Writes. Every put and delete is a JetStream publish conditioned on the
// key's current message (Nats-Expected-Last-Subject-Sequence, 0 = none).
// The base of that condition is first guessed from this instance's memory;
// if the guess fails a precondition or the server refuses the publish
// (wrong last sequence), the key is read from the stream leader and the
// write retried (at most 16 times, then 503 "contention"). Preconditions
// (expected_revision, fence) are checked against exactly the message the
// publish is conditioned on, so check and write are one atomic step.
// Deletes write a KV delete marker (KV-Operation: DEL), so a deleted key
// keeps its fences; ttl_ms becomes Nats-TTL in whole seconds, rounded up.
// A publish that times out is answered 503 and not retried: it may have
// been written.
//
// Fences. Every stored message, values and delete markers alike, carries
// the header Latchkey-Fences: standard base64 of a pb.FenceSet, the highest
// token per lock the key was written under. A fenced write is refused (409
// stale_fence) when the stored token of its lock is higher; otherwise the
// new message carries the set with that lock raised to the write's token.
// Unfenced writes carry the set forward unchanged. A fenced delete of an
// absent key still writes a marker when it raises a token.
//
// Reads. A linearizable get rests on a write a quorum committed after the
// get arrived: alone, it reads the key's last message from the stream
// leader ($JS.API.STREAM.MSG.GET with last_by_subj, never a direct get,
// which followers may answer stale) and confirms it with a barrier
// conditioned on that sequence (a leader cut off from its quorum cannot
// commit it); when several are in flight they share one barrier and read
// the view once it applied it (ops.go getBatched, ttlguard.go
// confirmedRead). Stale gets read the view.
//
// The view. An ordered consumer (last message per subject first, then
// every new message) feeds a B-tree of key -> value, revision, fences;
// deleted and expired keys stay as tombstones. Because messages arrive in
// stream order, the tree is always a consistent cut of the stream at the
// last sequence it applied. Start returns once every view has caught up.
//
// Scans (and batched gets). A scan first publishes a barrier message to
// $KV.<bucket>.=sync ('=' is outside base64url, so it is never a key) and
// waits until the view has applied the barrier's sequence: every write
// acknowledged before the scan began is then visible. Concurrent scans share one barrier publish.
// Pages are cut at limit or at about max_payload bytes, and more says
// whether another key with the prefix follows.
//
// Health. A view that has been idle for 5 s is probed with a barrier; if
// the probe fails, stale gets are refused (503) until one succeeds, and a
// view that stopped advancing gets a new consumer from where it left off.
//
// Limits. A key whose message disappears loses its fences with it: the
// server's marker for an expired TTL carries no Latchkey-Fences, and that
// marker itself is removed after LimitMarkerTTL. A view whose consumer
// stalls for longer than LimitMarkerTTL may miss an expiry. Delete markers
// are kept forever (one per deleted key) because they hold the fences.
package storage

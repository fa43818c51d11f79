// Package subjects names every NATS subject latchkey uses, from one
// configurable prefix. User keys never appear in a subject.
package subjects

import "strings"

// DefaultPrefix is the subject prefix of a deployment unless configured.
const DefaultPrefix = "latchkey"

// Public endpoints of docs/API.md, relative to the prefix.
const (
	KVGet       = "kv.get"
	KVPut       = "kv.put"
	KVDelete    = "kv.delete"
	KVScan      = "kv.scan"
	LockAcquire = "lock.acquire"
	LockRenew   = "lock.renew"
	LockRelease = "lock.release"
	LockGet     = "lock.get"

	KVWatch          = "kv.watch"
	KVWatchKeepalive = "kv.watch.keepalive"
	KVWatchCancel    = "kv.watch.cancel"
)

// Operations on a running watch's control subject (WatchControl).
const (
	WatchOpKeepalive = "keepalive"
	WatchOpCancel    = "cancel"
)

// Set names the subjects of one deployment.
type Set struct{ Prefix string }

// New returns the subject set for prefix ("" means DefaultPrefix).
func New(prefix string) Set {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Set{Prefix: strings.TrimSuffix(prefix, ".")}
}

// Public returns the full subject of a public endpoint, e.g. latchkey.kv.get.
func (s Set) Public(endpoint string) string { return s.Prefix + "." + endpoint }

// ShardGroup is the subject group of one shard's internal endpoints, e.g.
// latchkey.shard.2; the router sends shard requests to ShardGroup(id)+".get".
func (s Set) ShardGroup(shardID string) string { return s.Prefix + ".shard." + shardID }

// Shard returns the internal subject of op ("get", "put", "delete", "scan")
// on one shard.
func (s Set) Shard(shardID, op string) string { return s.ShardGroup(shardID) + "." + op }

// WatchControl is the subject on which the storage instances feeding a
// watch take its keepalives and cancels (op is WatchOpKeepalive or
// WatchOpCancel), e.g. latchkey.watchctl.<watch_id>.keepalive. Every
// instance subscribes to WatchControl("*", "*"); those serving the watch
// answer.
func (s Set) WatchControl(watchID, op string) string {
	return s.Prefix + ".watchctl." + watchID + "." + op
}

// MetaBucket is the JetStream KV bucket holding the shard map, and
// ShardBucket the one holding a shard's data. Bucket names allow only
// [A-Za-z0-9_-], so the prefix is folded to that alphabet.
func (s Set) MetaBucket() string { return bucketSafe(s.Prefix) + "_meta" }

// ShardBucket names the KV bucket of one shard.
func (s Set) ShardBucket(shardID string) string { return bucketSafe(s.Prefix) + "_shard_" + shardID }

// LockBucket names the KV bucket of the locker.
func (s Set) LockBucket() string { return bucketSafe(s.Prefix) + "_locks" }

func bucketSafe(p string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, p)
}

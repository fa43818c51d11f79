// Package consistenthash is kept for its importers: the hashing moved to
// kit/consistenthash, because storage needs the same key-to-shard mapping
// to decide which keys a shard still owns during a move.
package consistenthash

import "github.com/latchkey/latchkey/kit/consistenthash"

// Map is kit/consistenthash.Map.
type Map = consistenthash.Map

// New is kit/consistenthash.New.
func New(shardIDs []string) *Map { return consistenthash.New(shardIDs) }

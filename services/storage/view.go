package storage

import (
	"bytes"
	"context"
	"sync"
	"time"
	"unsafe"

	"github.com/google/btree"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
)

// entry is one key of a shard's in-memory view. Entries are stored by value
// in the B-tree and kept small (56 bytes): key, fences header and value
// share one allocation. Deleted and expired keys stay as tombstones
// (live=false) because their sequence, revision and fences are the base of
// the next conditional write.
type entry struct {
	kv    []byte // key, then Latchkey-Fences header, then value; never modified once stored
	seq   uint64 // stream sequence of the key's current message
	rev   uint64 // the key's revision (revision.go)
	exp   int64  // unix nanos (server clock) when the server expires it; 0 = never
	flen  uint32
	klen  uint16
	live  bool
	moved bool // a moved marker: the key was handed to another shard
	// movedLive: a moved marker of a key that held a value when it was
	// handed over (shardfmt.HeaderMovedLive); scans during a move name
	// such keys so the router finds them on their new shard.
	movedLive bool
	// orphan: a create stored after an ownership record that disowns the
	// key, or a write on one; answered 503 and never served (handover.go).
	orphan bool
}

func newEntry(key string, seq, rev uint64, exp int64, live, moved, movedLive, orphan bool, value []byte, fences string) entry {
	kv := make([]byte, len(key)+len(fences)+len(value))
	n := copy(kv, key)
	n += copy(kv[n:], fences)
	copy(kv[n:], value)
	return entry{kv: kv, seq: seq, rev: rev, exp: exp, flen: uint32(len(fences)), klen: uint16(len(key)), live: live, moved: moved, movedLive: moved && movedLive, orphan: orphan}
}

func (e *entry) key() []byte    { return e.kv[:e.klen] }
func (e *entry) fences() string { return string(e.kv[e.klen : uint32(e.klen)+e.flen]) }
func (e *entry) value() []byte  { return e.kv[uint32(e.klen)+e.flen:] }

func lessEntry(a, b entry) bool { return string(a.kv[:a.klen]) < string(b.kv[:b.klen]) }

// probe builds a lookup entry over key's bytes without copying them; it
// must not be stored.
func probe(key string) entry {
	return entry{kv: unsafe.Slice(unsafe.StringData(key), len(key)), klen: uint16(len(key))}
}

// base is what a conditional write needs to know about a key's current
// message: its sequence (0 = no message), its revision, whether it is a
// value, when the server expires it, and its fences.
type base struct {
	seq     uint64
	rev     uint64
	marker  bool   // the server's own marker (an expiry): its rev is only a bound
	moved   bool   // a moved marker (handover.go)
	orphan  bool   // from the view only: see entry.orphan
	movedTo string // the shard it names; from leader reads only
	exp     int64  // unix nanos, server clock; 0 = never expires
	writeID string // Latchkey-Write-Id of the message, from leader reads only
	// after is the message's Nats-Expected-Last-Subject-Sequence (leader
	// reads only): the key's message it was written on, "" for messages
	// written unconditioned (the server's markers).
	after  string
	live   bool
	fences string
	value  []byte
}

// maxPending bounds the write-base overlay if the view stops advancing.
const maxPending = 1 << 16

// view is a shard's key space as of stream sequence applied: an ordered
// consumer feeds it every message in stream order, so the tree is always a
// consistent cut of the stream, which is what makes a scan after a barrier
// linearizable. Results of this instance's own writes and leader reads do
// not enter the tree (that would break the cut); they go to pending, an
// overlay used only as the base of the next write on the same key, dropped
// once the consumer has caught up with them.
type view struct {
	mu      sync.RWMutex
	tree    *btree.BTreeG[entry]
	applied uint64
	// gapAt is the sequence of the first message the consumer delivered
	// past a gap: messages it never delivered because they were deleted
	// first (History 1 drops a key's message when the next one lands), as
	// happens when the consumer falls behind (a paused process, a restart
	// from where it stopped, the first load). Until the consumer reaches
	// the stream's end (a message with nothing pending, caughtUp), a key
	// may show a value older than its version as of applied: its newer
	// message was deleted and its newest lies beyond applied. 0 = none.
	gapAt    uint64
	floor    uint64     // the shard's revision floor as of applied (revision.go)
	own      *ownership // the last ownership record applied; nil: owns every key (handover.go)
	progress time.Time  // when the consumer last delivered a message
	pending  map[string]base
	live     int // live keys in tree
	waiters  int
	notify   chan struct{}
	// keyWatch holds, per key, channels closed when the key next changes
	// (keyChanged): writes waiting out an expiry sleep on them.
	keyWatch map[string][]chan struct{}
}

func newView() *view {
	return &view{
		tree:     btree.NewG(32, lessEntry),
		pending:  make(map[string]base),
		notify:   make(chan struct{}),
		keyWatch: make(map[string][]chan struct{}),
		progress: time.Now(),
	}
}

// apply records one message delivered by the consumer and returns its
// revision. Ordered consumers may deliver a message again after a reset;
// older sequences are ignored. isKey is false for messages that are not
// keys (scan barriers, floor records). movedLive matters only for a moved
// marker: the key held a value when it was handed over.
func (v *view) apply(key string, isKey bool, seq uint64, ri revInfo, marker, moved, movedLive, orphan bool, exp int64, live bool, value []byte, fences string) uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.progress = time.Now()
	rev := ri.Revision(seq, marker, v.floor)
	if isKey {
		old, found := v.tree.Get(probe(key))
		if !found || seq > old.seq {
			if moved {
				value = nil // the marker's copy of the value is the mover's, not the view's
			}
			v.tree.ReplaceOrInsert(newEntry(key, seq, rev, exp, live, moved, movedLive, orphan, value, fences))
			if found && old.live {
				v.live--
			}
			if live {
				v.live++
			}
		}
		if p, ok := v.pending[key]; ok && p.seq <= seq {
			delete(v.pending, key)
		}
		if chs, ok := v.keyWatch[key]; ok {
			for _, ch := range chs {
				close(ch)
			}
			delete(v.keyWatch, key)
		}
	}
	if seq > v.applied+1 && v.gapAt == 0 {
		v.gapAt = seq
	}
	if seq > v.applied {
		v.applied = seq
		if v.waiters > 0 {
			close(v.notify)
			v.notify = make(chan struct{})
		}
	}
	return rev
}

// raiseFloor applies a floor record. The floor only rises: a redelivered
// older record changes nothing.
func (v *view) raiseFloor(floor uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if floor > v.floor {
		v.floor = floor
	}
}

// setOwner applies an ownership record; an older one (a redelivery)
// changes nothing.
func (v *view) setOwner(o *ownership) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.own == nil || o.seq > v.own.seq {
		v.own = o
	}
}

// owner returns the last ownership record applied (nil: none).
func (v *view) owner() *ownership {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.own
}

// lookup returns the tree's entry for key as a base (seq 0: none), with
// its value.
func (v *view) lookup(key string) base {
	v.mu.RLock()
	defer v.mu.RUnlock()
	e, ok := v.tree.Get(probe(key))
	if !ok {
		return base{}
	}
	b := base{seq: e.seq, rev: e.rev, exp: e.exp, live: e.live, moved: e.moved, orphan: e.orphan, fences: e.fences()}
	if e.live {
		b.value = e.value()
	}
	return b
}

// floorAt returns the view's floor and the sequence it has applied.
func (v *view) floorAt() (floor, applied uint64) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.floor, v.applied
}

// remember records the result of a write or leader read as the base of the
// next write on key, unless the tree already knows something newer.
func (v *view) remember(key string, b base) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if e, ok := v.tree.Get(probe(key)); ok && e.seq >= b.seq {
		return
	}
	if p, ok := v.pending[key]; ok && p.seq >= b.seq {
		return
	}
	if len(v.pending) >= maxPending {
		return
	}
	b.value = nil
	v.pending[key] = b
}

// guess returns the freshest base this instance knows for key; it may be
// stale, so writes are conditional on it and fall back to a leader read.
func (v *view) guess(key string) base {
	v.mu.RLock()
	defer v.mu.RUnlock()
	var b base
	if e, ok := v.tree.Get(probe(key)); ok {
		b = base{seq: e.seq, rev: e.rev, exp: e.exp, live: e.live, moved: e.moved, fences: e.fences()}
	}
	if p, ok := v.pending[key]; ok && p.seq > b.seq {
		b = p
	}
	return b
}

// liveKeys counts the keys that hold a value (tombstones excluded).
func (v *view) liveKeys() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.live
}

// lastProgress says when the consumer last delivered a message.
func (v *view) lastProgress() time.Time {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.progress
}

func (v *view) appliedSeq() uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.applied
}

// caughtUp records that the consumer delivered seq with nothing pending
// after it: it has delivered the newest message of every key, so a gap
// before seq no longer shows.
func (v *view) caughtUp(seq uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.gapAt != 0 && seq >= v.gapAt {
		v.gapAt = 0
		if v.waiters > 0 {
			close(v.notify)
			v.notify = make(chan struct{})
		}
	}
}

// waitCut blocks until the view has applied stream sequence seq and is a
// consistent cut of the stream: every key as of applied (no gap shows).
// Reads that must see every write acknowledged before seq use it.
func (v *view) waitCut(ctx context.Context, seq uint64) error {
	return v.waitUntil(ctx, func() bool { return v.applied >= seq && v.gapAt == 0 })
}

// wait blocks until the view has applied stream sequence seq.
func (v *view) wait(ctx context.Context, seq uint64) error {
	return v.waitUntil(ctx, func() bool { return v.applied >= seq })
}

// waitUntil blocks until done (called under v.mu) holds.
func (v *view) waitUntil(ctx context.Context, done func() bool) error {
	v.mu.Lock()
	for !done() {
		ch := v.notify
		v.waiters++
		v.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			v.mu.Lock()
			v.waiters--
			v.mu.Unlock()
			return ctx.Err()
		}
		v.mu.Lock()
		v.waiters--
	}
	v.mu.Unlock()
	return nil
}

// keyChanged returns a channel that is closed once the view applies a
// message of key newer than seq (at once if it already has), and a func
// that gives the channel up.
func (v *view) keyChanged(key string, seq uint64) (<-chan struct{}, func()) {
	v.mu.Lock()
	defer v.mu.Unlock()
	ch := make(chan struct{})
	if e, ok := v.tree.Get(probe(key)); ok && e.seq > seq {
		close(ch)
		return ch, func() {}
	}
	v.keyWatch[key] = append(v.keyWatch[key], ch)
	return ch, func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		chs := v.keyWatch[key]
		for i, c := range chs {
			if c == ch {
				chs = append(chs[:i], chs[i+1:]...)
				break
			}
		}
		if len(chs) == 0 {
			delete(v.keyWatch, key)
		} else {
			v.keyWatch[key] = chs
		}
	}
}

// scan returns up to limit live keys with prefix that sort after after,
// keeping the page under budget bytes (at least one item), and whether
// more such keys follow.
//
// self is the shard's id: a key the last ownership record gives away is
// listed only from a message older than the record (handover.go), so an
// orphan is never listed.
//
// With report, the page also names in handed the keys of its range that
// this shard handed over and no longer serves although they may hold a
// value: a moved marker of a live key, and a live message newer than an
// ownership record that gives the key away (an acknowledged write on a
// message older than the record, which the mover's next pass hands over,
// or an orphan, which it copies too). A router scanning during a move
// looks those up on their new shard; every other key this shard does not
// list held no value here as of the view (handover.go). Handed-over keys
// count towards limit and budget like items, so the page's range ends at
// the larger of its last item and its last handed-over key.
func (v *view) scan(self, prefix, after string, limit, budget int, report bool) (items []*pb.Item, handed []string, more bool) {
	start := prefix
	if after > start {
		start = after
	}
	pfx := []byte(prefix)
	size, n := 0, 0
	v.mu.RLock()
	defer v.mu.RUnlock()
	v.tree.AscendGreaterOrEqual(probe(start), func(e entry) bool {
		k := e.key()
		if !bytes.HasPrefix(k, pfx) {
			return false
		}
		if string(k) == after {
			return true
		}
		givenAway := !v.own.owns(self, string(k)) && e.seq > v.own.seq
		served := e.live && !givenAway
		gone := report && ((e.moved && e.movedLive) || (e.live && givenAway))
		if !served && !gone {
			return true
		}
		cost := len(k) + 8
		if served {
			cost = len(e.kv) + 24
		}
		if n == limit || (n > 0 && size+cost > budget) {
			more = true
			return false
		}
		size += cost
		n++
		if served {
			items = append(items, &pb.Item{Key: string(k), Value: e.value(), Revision: e.rev})
		} else {
			handed = append(handed, string(k))
		}
		return true
	})
	return items, handed, more
}

// keyLocks serialises this instance's writes to one key, so concurrent
// writers of a hot key queue here instead of failing each other's
// conditional publishes. Other instances still race; the condition on the
// stream keeps that correct.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{}
	refs int
}

func (k *keyLocks) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[string]*keyLock)
	}
	l := k.m[key]
	if l == nil {
		l = &keyLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}

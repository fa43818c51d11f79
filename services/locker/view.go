package locker

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/latchkey/latchkey/kit/jskv"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// The locker's view of the lock bucket: per lock key, the sequence of the
// key's last message as this instance last learnt it, with that message's
// parsed content. It lets acquire, renew and release condition their one
// publish on a guess instead of reading the stream leader first (issue 15).
//
// Why a guess is safe: a stream message never changes once stored. An
// entry says "the message at sequence S is this record (or this marker)",
// which is true whenever the entry was made from that message (a consumer
// delivery, a leader read) or from this instance's own acknowledged write.
// A publish conditioned on S (Nats-Expected-Last-Subject-Sequence) is
// stored only if S is still the key's last message, so a decision taken on
// the entry's content ("token T holds", "the lock is free") is exactly the
// decision a fresh leader read of S would give. An out-of-date entry can
// only cost a refusal, after which the operation reads the leader as it
// always did. What the view never does is answer from its content without
// a write: a not_held, lock_held or lock.get answer always rests on a
// leader read (or, for lock.get, a quorum-confirmed one), since a lagging
// view could claim an old state.

const (
	// viewStaleAfter is how long the view may trail a sequence this
	// instance saw (its own acknowledged write, a leader read) without
	// delivering anything, before it is taken for stalled: guesses stop
	// and the consumer is recreated. Ordered consumers have been seen to
	// stop delivering after a stream-leader change (docs/ARCHITECTURE.md).
	viewStaleAfter = time.Second
	// viewSweepEvery is how often entries of markers past their expiry
	// are dropped: the server removes such a marker without a new message,
	// so the view would otherwise keep one entry per name ever used.
	viewSweepEvery = 30 * time.Second
)

// viewEntry is what the view knows of one key's last message.
type viewEntry struct {
	seq     uint64
	exp     time.Time      // when the server expires the message; zero: never
	record  *pb.LockRecord // token resolved; nil for a marker (the lock is free)
	writeID string         // jskv.HeaderWriteID of the message, if a locker wrote it
}

// lease is the entry in the shape the lock operations decide on.
func (e viewEntry) lease() lease {
	return lease{seq: e.seq, exp: e.exp, held: e.record != nil, record: e.record, writeID: e.writeID}
}

type view struct {
	mu      sync.Mutex
	entries map[string]viewEntry // by key token (jskv.EncodeKey of the name)
	// ready: the consumer has delivered the bucket's last message per key
	// once since it was (re)started, so a key without an entry has no
	// message (or one this view will soon apply). Before that, no guesses.
	ready    bool
	applied  uint64    // highest stream sequence delivered
	progress time.Time // last delivery
	// trailSeq is the highest sequence this instance saw outside the
	// consumer (acks, leader reads); trailSince is when the view first
	// trailed it, zero while it does not.
	trailSeq   uint64
	trailSince time.Time
	restart    chan struct{} // buffered 1: asks follow to recreate the consumer
}

func newView() *view {
	return &view{entries: map[string]viewEntry{}, progress: time.Now(), restart: make(chan struct{}, 1)}
}

// guess returns the view's entry for key as a lease (seq 0 and not held
// when the key has no entry), or ok false when the view cannot guess: not
// caught up yet, or stalled.
func (v *view) guess(key string) (l lease, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.ready {
		return lease{}, false
	}
	if !v.trailSince.IsZero() && time.Since(v.trailSince) > viewStaleAfter && time.Since(v.progress) > viewStaleAfter {
		select {
		case v.restart <- struct{}{}:
		default:
		}
		return lease{}, false
	}
	e, found := v.entries[key]
	if !found {
		return lease{}, true
	}
	return e.lease(), true
}

// newest is the highest sequence of key this instance has seen (delivered,
// read or written by itself), 0 if none, whether or not the view is ready.
func (v *view) newest(key string) uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.entries[key].seq
}

// apply records a message delivered by the consumer (or read from the
// leader: fromConsumer false). A sequence older than the entry's is
// ignored: deliveries repeat after a consumer reset, and a leader read or
// an own write may already have told a newer one.
func (v *view) apply(key string, e viewEntry, fromConsumer bool, caughtUp bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if fromConsumer {
		v.progress = time.Now()
		v.applied = max(v.applied, e.seq)
		if caughtUp {
			v.ready = true
		}
		if v.applied >= v.trailSeq {
			v.trailSince = time.Time{}
		}
	} else {
		v.sawLocked(e.seq)
	}
	if key == "" {
		return // not a lock key (a lock.get barrier): only the position counts
	}
	if old, found := v.entries[key]; !found || old.seq <= e.seq {
		v.entries[key] = e
	}
}

// forget drops key's entry if it is not newer than seq: the message there
// could not be parsed, and a leader read decides what to answer.
func (v *view) forget(key string, seq uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if e, ok := v.entries[key]; ok && e.seq <= seq {
		delete(v.entries, key)
	}
}

// sawLocked notes a sequence this instance learnt outside the consumer.
func (v *view) sawLocked(seq uint64) {
	if seq <= v.applied {
		return
	}
	if v.trailSince.IsZero() {
		v.trailSince = time.Now()
	}
	v.trailSeq = max(v.trailSeq, seq)
}

// markReady is for a bucket that held no message when the consumer
// started: nothing will be delivered to say the view caught up.
func (v *view) markReady() {
	v.mu.Lock()
	v.ready = true
	v.mu.Unlock()
}

// reset empties the view before a new consumer refills it.
func (v *view) reset() {
	v.mu.Lock()
	defer v.mu.Unlock()
	clear(v.entries)
	v.ready, v.applied, v.trailSeq, v.trailSince, v.progress = false, 0, 0, time.Time{}, time.Now()
}

// sweep drops markers the server has removed (their TTL ran out more than
// the clock allowance and an expiry pass ago), and unparseable leftovers.
func (v *view) sweep(now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for k, e := range v.entries {
		if e.record == nil && !e.exp.IsZero() && now.After(e.exp.Add(time.Second)) {
			delete(v.entries, k)
		}
	}
}

// entryOf parses one stored message of the lock bucket.
func entryOf(seq uint64, ts time.Time, h nats.Header, data []byte) (viewEntry, error) {
	e := viewEntry{seq: seq, writeID: h.Get(jskv.HeaderWriteID)}
	e.exp, _ = jskv.Expiry(ts, h)
	if jskv.IsDeleteMarker(h) {
		return e, nil
	}
	rec := &pb.LockRecord{}
	if err := proto.Unmarshal(data, rec); err != nil {
		return viewEntry{}, err
	}
	if rec.Token == 0 {
		rec.Token = seq // the acquiring write: its own sequence is the token
	}
	e.record = rec
	return e, nil
}

// follow feeds the view from an ordered consumer on the bucket until ctx
// ends, recreating the consumer when guess finds the view stalled, and
// sweeps expired markers. The view only speeds operations up: while it
// cannot be fed, every operation reads the leader.
func (s *Server) follow(ctx context.Context) {
	var cc jetstream.ConsumeContext
	stop := func() {
		if cc != nil {
			cc.Stop()
			cc = nil
		}
	}
	defer stop()
	sweep := time.NewTicker(viewSweepEvery)
	defer sweep.Stop()
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-sweep.C:
			s.view.sweep(now)
			continue
		case <-s.view.restart:
			s.log.Info("lock view stalled; recreating its consumer")
			stop()
		case <-retry.C:
		}
		if cc != nil {
			continue
		}
		s.view.reset()
		var err error
		if cc, err = s.startConsumer(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("lock view consumer failed; operations read the leader meanwhile", "err", err)
			retry.Reset(time.Second)
		}
	}
}

func (s *Server) startConsumer(ctx context.Context) (jetstream.ConsumeContext, error) {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := s.js.Stream(sctx, s.stream)
	if err != nil {
		return nil, err
	}
	empty := st.CachedInfo().State.Msgs == 0
	cons, err := s.js.OrderedConsumer(sctx, s.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{s.subj + ">"},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return nil, err
	}
	cc, err := cons.Consume(s.onMsg, jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if !errors.Is(err, jetstream.ErrNoHeartbeat) {
				s.log.Debug("lock view consumer", "err", err)
			}
		}))
	if err != nil {
		return nil, err
	}
	if empty {
		// Checked before the consumer started: whatever was stored since
		// is delivered and applied over this.
		s.view.markReady()
	}
	return cc, nil
}

func (s *Server) onMsg(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	seq, caughtUp := md.Sequence.Stream, md.NumPending == 0
	key := strings.TrimPrefix(m.Subject(), s.subj)
	if key == jskv.BarrierToken || key == m.Subject() {
		s.view.apply("", viewEntry{seq: seq}, true, caughtUp)
		return
	}
	e, err := entryOf(seq, md.Timestamp, m.Headers(), m.Data())
	if err != nil {
		s.view.apply("", viewEntry{seq: seq}, true, caughtUp)
		s.view.forget(key, seq)
		return
	}
	s.view.apply(key, e, true, caughtUp)
}

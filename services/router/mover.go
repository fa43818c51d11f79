package router

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/consistenthash"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/shardfmt"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// The mover (docs/ARCHITECTURE.md, "Resharding") runs inside every router:
// routers already hold the meta bucket, the map and a connection, every
// deployment runs at least one, and so a move survives the crash of the
// router driving it: another router (or the same one restarted) takes the
// lease and resumes. Its only state is the move in the shard map record;
// every step is a conditional publish or an idempotent record, found again
// by scanning the streams, so two movers running at once (a lease that
// lapsed) cost work, never correctness: each marker and copy is
// conditioned on the message it was derived from.

const (
	moverLeaseKey   = "mover"
	moverLease      = 10 * time.Second
	moverTick       = 250 * time.Millisecond
	moverWorkers    = 32
	progressEvery   = 250 * time.Millisecond
	handoverRetries = 32
	// ttlGuard: a value this close to its server-side expiry is left to
	// expire before it is handed over: the server's expiry marker would
	// otherwise roll up (erase) the moved marker.
	ttlGuard = time.Second
	// floorSlack is how far above the revision that needs it a floor is
	// raised, so that a move raises a floor a few times, not per key.
	floorSlack = 1 << 20
)

// errStopped ends a drive whose move was aborted or replaced.
var errStopped = errors.New("the move was stopped")

type mover struct {
	s        *Server
	js       jetstream.JetStream
	id       string
	leaseFor time.Duration
	log      *slog.Logger
	moved    atomic.Uint64
	freeze   freezeHist

	mu     sync.Mutex
	floors map[string]uint64 // shard -> floor this mover knows is in force
	owners map[string]uint64 // target shard -> sequence of this move's ownership record
}

func newMover(s *Server, js jetstream.JetStream) *mover {
	return &mover{s: s, js: js, id: rand.Text()[:12], leaseFor: moverLease, log: s.log.With("role", "mover")}
}

// run drives every move it finds in the map until ctx ends.
func (mv *mover) run(ctx context.Context) {
	t := time.NewTicker(moverTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m, _, err := readMap(ctx, mv.s.kv)
		if err != nil || m == nil || !(running(m.Move) || unfinished(m.Move) || retiring(m.Move)) {
			continue
		}
		if !mv.lease(ctx) {
			continue
		}
		switch {
		case unfinished(m.Move):
			err = mv.giveBack(ctx, m)
		case retiring(m.Move):
			err = mv.retire(ctx, m)
		default:
			if err = mv.drive(ctx, m); err == nil {
				m, _, err = readMap(ctx, mv.s.kv)
				if err == nil && m != nil && retiring(m.Move) {
					err = mv.retire(ctx, m)
				}
			}
		}
		switch {
		case err == nil:
			mv.log.Info("move done", "epoch", m.Epoch+1, "shards", m.Move.ToShards, "keys_moved", mv.moved.Load())
		case errors.Is(err, errStopped) || ctx.Err() != nil:
		default:
			mv.log.Warn("move stopped by an error; resuming", "err", err)
		}
		mv.release(context.Background())
	}
}

func running(mv *pb.ShardMove) bool {
	return mv != nil && (mv.State == pb.MoveState_MOVE_STATE_COPYING || mv.State == pb.MoveState_MOVE_STATE_HANDOVER)
}

// lease takes or renews the mover lease; it only keeps routers from all
// doing the same work, safety does not rest on it (see above).
func (mv *mover) lease(ctx context.Context) bool {
	now := time.Now()
	val := []byte(mv.id + " " + strconv.FormatInt(now.Add(mv.leaseFor).UnixMilli(), 10))
	e, err := mv.s.kv.Get(ctx, moverLeaseKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		_, err = mv.s.kv.Create(ctx, moverLeaseKey, val)
		return err == nil
	}
	if err != nil {
		return false
	}
	owner, until, _ := strings.Cut(string(e.Value()), " ")
	ms, _ := strconv.ParseInt(until, 10, 64)
	if owner != mv.id && now.UnixMilli() < ms {
		return false
	}
	_, err = mv.s.kv.Update(ctx, moverLeaseKey, val, e.Revision())
	return err == nil
}

func (mv *mover) release(ctx context.Context) {
	e, err := mv.s.kv.Get(ctx, moverLeaseKey)
	if err == nil && strings.HasPrefix(string(e.Value()), mv.id+" ") {
		_ = mv.s.kv.Delete(ctx, moverLeaseKey, jetstream.LastRevision(e.Revision()))
	}
}

// drive runs the move in m to its flip.
func (mv *mover) drive(parent context.Context, m *pb.ShardMap) error {
	ctx, cancel := context.WithCancelCause(parent)
	A, B := m.Shards, m.Move.ToShards
	next := m.Epoch + 1
	ha, hb := consistenthash.New(A), consistenthash.New(B)
	gains, loses := changedOwners(ha, hb)
	mv.forgetShardState()
	mv.freeze.reset()
	mv.moved.Store(m.Move.KeysMoved)
	mv.log.Info("driving move", "from", A, "to", B, "epoch", next)

	// Progress, lease renewal, and noticing an abort.
	var wg sync.WaitGroup
	defer func() { cancel(nil); wg.Wait() }() // the reporter ends with ctx
	wg.Go(func() {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			mv.lease(ctx)
			err := mv.update(ctx, m.Epoch, mv.progress)
			if errors.Is(err, errStopped) {
				cancel(errStopped)
				return
			}
		}
	})
	stopped := func(err error) error {
		if c := context.Cause(ctx); errors.Is(c, errStopped) {
			return errStopped
		}
		return err
	}

	for _, id := range B {
		if err := mv.awaitServed(ctx, m.Epoch, id); err != nil {
			return stopped(err)
		}
	}
	bound, err := mv.revisionBound(ctx, A)
	if err != nil {
		return stopped(err)
	}
	for t := range gains {
		if err := mv.prepareTarget(ctx, t, next, B, ha, hb, bound); err != nil {
			return stopped(fmt.Errorf("prepare shard %s: %w", t, err))
		}
	}
	for s := range loses {
		if err := mv.pass(ctx, s, ha, hb); err != nil {
			return stopped(fmt.Errorf("hand over shard %s: %w", s, err))
		}
	}
	if err := mv.update(ctx, m.Epoch, func(mo *pb.ShardMove) { mo.State = pb.MoveState_MOVE_STATE_HANDOVER }); err != nil {
		return stopped(err)
	}
	for s := range loses {
		if !gains[s] {
			if _, err := mv.writeOwner(ctx, s, next, B); err != nil {
				return stopped(err)
			}
		}
	}
	for s := range loses {
		if err := mv.pass(ctx, s, ha, hb); err != nil {
			return stopped(fmt.Errorf("hand over shard %s: %w", s, err))
		}
	}
	return stopped(mv.flip(ctx, m.Epoch, B))
}

// giveBack finishes an aborted move: every key it handed over goes back
// to its owner under the old set, the same way keys went out (marker on
// the shard that has it, copy on the old owner conditioned on the marker
// there). First each old owner's ownership record for the old set (it owns
// its keys again) and each new shard's (it takes no new key of the old
// set's buckets); then one pass over each new shard suffices, since after
// its record no key can appear there that the pass would miss.
func (mv *mover) giveBack(ctx context.Context, m *pb.ShardMap) error {
	A, B := m.Shards, m.Move.ToShards
	ha, hb := consistenthash.New(A), consistenthash.New(B)
	gains, loses := changedOwners(ha, hb)
	mv.forgetShardState()
	mv.log.Info("moving keys back after an abort", "shards", A, "from", B)
	var back []string
	for t := range gains {
		// A new shard whose bucket was never created (the move waited for
		// its storage) received nothing.
		if _, err := mv.js.Stream(ctx, mv.stream(t)); errors.Is(err, jetstream.ErrStreamNotFound) {
			delete(gains, t)
			continue
		} else if err != nil {
			return err
		}
		back = append(back, t)
	}
	bound, err := mv.revisionBound(ctx, back)
	if err != nil {
		return err
	}
	for s := range loses {
		if err := mv.ensureFloor(ctx, s, bound); err != nil {
			return err
		}
		seq, err := mv.writeOwner(ctx, s, m.Epoch, A)
		if err != nil {
			return err
		}
		mv.mu.Lock()
		mv.owners[s] = seq
		mv.mu.Unlock()
	}
	for t := range gains {
		if _, err := mv.writeOwner(ctx, t, m.Epoch, A); err != nil {
			return err
		}
	}
	for t := range gains {
		if err := mv.pass(ctx, t, hb, ha); err != nil {
			return fmt.Errorf("move keys back from shard %s: %w", t, err)
		}
	}
	// A marker whose copy never landed (the mover stopped between the
	// two): the marker holds the key, so the old owner takes it back from
	// there. Nothing else writes copies, so the new shard has none.
	for s := range loses {
		err := mv.eachLast(ctx, s, func(msg *jskv.Msg) error {
			key, ok := keyOf(msg.Subject)
			if !ok || ha.Get(key) != s || shardfmt.MovedTo(msg.Header) == "" || shardfmt.MovedTo(msg.Header) != hb.Get(key) {
				return nil
			}
			return mv.copyTo(ctx, s, key, markerSnapshot(msg))
		})
		if err != nil {
			return fmt.Errorf("take keys back on shard %s: %w", s, err)
		}
	}
	err = mv.rewrite(ctx, func(cur *pb.ShardMap) bool { return cur.Epoch == m.Epoch && unfinished(cur.Move) },
		func(cur *pb.ShardMap) { cur.Move.Returned = true })
	if err == nil {
		mv.log.Info("keys moved back; the old set is whole again", "shards", A)
	}
	return err
}

// update changes the running move of epoch from (CAS on the record);
// errStopped when the record no longer holds that running move.
func (mv *mover) update(ctx context.Context, from uint64, f func(*pb.ShardMove)) error {
	return mv.rewrite(ctx, func(m *pb.ShardMap) bool { return m.Epoch == from && running(m.Move) },
		func(m *pb.ShardMap) { f(m.Move) })
}

// rewrite changes the map record with f while holds says the record is
// still in the state f is meant for: a CAS on the record's revision,
// re-read and retried when another writer came first; errStopped when
// the record no longer holds (an abort, a flip, another mover's work).
func (mv *mover) rewrite(ctx context.Context, holds func(*pb.ShardMap) bool, f func(*pb.ShardMap)) error {
	for range 10 {
		m, rev, err := readMap(ctx, mv.s.kv)
		if err != nil {
			return err
		}
		if m == nil || !holds(m) {
			return errStopped
		}
		f(m)
		m.Move.UpdatedUnixMs = time.Now().UnixMilli()
		data, _ := proto.Marshal(m)
		if _, err = mv.s.kv.Update(ctx, shardMapKey, data, rev); err == nil {
			mv.s.apply(m)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return errors.New("the shard map record kept changing")
}

// flip makes B the set in force, at epoch from+1.
func (mv *mover) flip(ctx context.Context, from uint64, B []string) error {
	err := mv.rewrite(ctx, func(m *pb.ShardMap) bool { return m.Epoch == from && running(m.Move) }, func(m *pb.ShardMap) {
		m.Epoch, m.Shards = from+1, B
		m.Move.State, m.Move.Reason = pb.MoveState_MOVE_STATE_DONE, ""
		mv.progress(m.Move)
	})
	if err == nil {
		p99, longest := mv.freeze.quantile(0.99)
		mv.log.Info("flipped", "epoch", from+1, "keys_moved", mv.moved.Load(), "key_freeze_p99", p99, "key_freeze_max", longest)
	}
	return err
}

// progress writes what this mover counted into the move record.
func (mv *mover) progress(mo *pb.ShardMove) {
	mo.KeysMoved = mv.moved.Load()
	p99, longest := mv.freeze.quantile(0.99)
	mo.FreezeP99Us, mo.FreezeMaxUs = uint64(p99.Microseconds()), uint64(longest.Microseconds())
}

// retiring reports a move that removed shards whose streams still hold
// what the move handed away (retire has not finished).
func retiring(mo *pb.ShardMove) bool {
	return mo != nil && mo.State == pb.MoveState_MOVE_STATE_DONE && !mo.Retired && len(removedShards(mo)) > 0
}

// removedShards lists the shards a move took out of the set.
func removedShards(mo *pb.ShardMove) []string {
	var out []string
	for _, id := range mo.FromShards {
		if !slices.Contains(mo.ToShards, id) {
			out = append(out, id)
		}
	}
	return out
}

// retire empties the streams of the shards the flipped move m removed.
// After the flip such a shard owns no key: everything in its stream is a
// moved marker, an orphan or a record. Its ownership record is written
// once more and the stream purged up to it, so what stays is exactly that
// record: a storage instance still serving the shard, with its view old
// or rebuilt, answers every key "moved" (no message, disowned), as it did
// with the markers. The record is never purged, so the shard can never
// look like an empty shard that owns keys. A new move waits until this
// is done (admin's move_running), so no move can make the shard an owner
// again while its stream is being purged.
func (mv *mover) retire(ctx context.Context, m *pb.ShardMap) error {
	for _, id := range removedShards(m.Move) {
		data, _ := proto.Marshal(&pb.ShardMap{Epoch: m.Epoch, Shards: m.Shards})
		ack, err := mv.js.Publish(ctx, mv.subject(id, shardfmt.OwnerToken), data)
		if err != nil {
			return fmt.Errorf("retire shard %s: ownership record: %w", id, err)
		}
		st, err := mv.js.Stream(ctx, mv.stream(id))
		if err != nil {
			return fmt.Errorf("retire shard %s: %w", id, err)
		}
		if err := st.Purge(ctx, jetstream.WithPurgeSequence(ack.Sequence)); err != nil {
			return fmt.Errorf("retire shard %s: purge below %d: %w", id, ack.Sequence, err)
		}
		mv.log.Info("shard retired: its stream holds only its ownership record", "shard", id, "seq", ack.Sequence)
	}
	return mv.rewrite(ctx, func(cur *pb.ShardMap) bool { return cur.Epoch == m.Epoch && retiring(cur.Move) },
		func(cur *pb.ShardMap) { cur.Move.Retired = true })
}

// awaitServed waits until some storage instance answers for shard id,
// reporting shard_unserved in the record meanwhile.
func (mv *mover) awaitServed(ctx context.Context, from uint64, id string) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := mv.s.call(cctx, id, "get", &pb.GetRequest{Key: "\x00latchkey-mover-probe", Consistency: pb.Consistency_CONSISTENCY_STALE}, &pb.GetResponse{}, nil)
		cancel()
		if err == nil || !errors.Is(err, apierr.ReasonShardUnavailable) {
			return mv.update(ctx, from, func(mo *pb.ShardMove) {
				if mo.Reason == string(apierr.ReasonShardUnserved) {
					mo.Reason = ""
				}
			})
		}
		if err := mv.update(ctx, from, func(mo *pb.ShardMove) { mo.Reason = string(apierr.ReasonShardUnserved) }); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func (mv *mover) bucket(id string) string { return mv.s.subj.ShardBucket(id) }
func (mv *mover) stream(id string) string { return "KV_" + mv.bucket(id) }
func (mv *mover) subject(id, token string) string {
	return "$KV." + mv.bucket(id) + "." + token
}

// revisionBound is above every revision a key of shards could carry now:
// a message's revision is at most its sequence plus its shard's floor.
func (mv *mover) revisionBound(ctx context.Context, shards []string) (uint64, error) {
	var bound uint64
	for _, id := range shards {
		st, err := mv.js.Stream(ctx, mv.stream(id))
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return 0, err
		}
		f, err := mv.readFloor(ctx, id)
		if err != nil {
			return 0, err
		}
		bound = max(bound, st.CachedInfo().State.LastSeq+f+1)
	}
	return bound, nil
}

func (mv *mover) readFloor(ctx context.Context, id string) (uint64, error) {
	m, found, err := jskv.LeaderGet(ctx, mv.s.nc, mv.stream(id), mv.subject(id, shardfmt.FloorToken))
	if err != nil || !found {
		return 0, err
	}
	f, _ := shardfmt.ParseFloor(m.Data)
	return f, nil
}

// ensureFloor makes shard id's floor at least want (CAS on the record, so
// racing movers never lower it).
func (mv *mover) ensureFloor(ctx context.Context, id string, want uint64) error {
	mv.mu.Lock()
	known := mv.floors[id]
	mv.mu.Unlock()
	if known >= want {
		return nil
	}
	subj := mv.subject(id, shardfmt.FloorToken)
	for range handoverRetries {
		m, found, err := jskv.LeaderGet(ctx, mv.s.nc, mv.stream(id), subj)
		if err != nil {
			return err
		}
		var cur, seq uint64
		if found {
			cur, _ = shardfmt.ParseFloor(m.Data)
			seq = m.Seq
		}
		if cur >= want {
			mv.mu.Lock()
			mv.floors[id] = max(mv.floors[id], cur)
			mv.mu.Unlock()
			return nil
		}
		nf := want + floorSlack
		_, err = jskv.PublishIfLast(ctx, mv.js, subj, []byte(strconv.FormatUint(nf, 10)), nil, seq)
		if err == nil {
			mv.mu.Lock()
			mv.floors[id] = max(mv.floors[id], nf)
			mv.mu.Unlock()
			return nil
		}
		if !errors.Is(err, jskv.ErrWrongLastSequence) {
			return err
		}
	}
	return errors.New("floor record kept changing")
}

// writeOwner writes shard id's ownership record for set shards at epoch
// and returns its sequence; an identical record already there is kept.
func (mv *mover) writeOwner(ctx context.Context, id string, epoch uint64, shards []string) (uint64, error) {
	subj := mv.subject(id, shardfmt.OwnerToken)
	m, found, err := jskv.LeaderGet(ctx, mv.s.nc, mv.stream(id), subj)
	if err != nil {
		return 0, err
	}
	if found {
		cur := &pb.ShardMap{}
		if proto.Unmarshal(m.Data, cur) == nil && cur.Epoch == epoch && sameSet(cur.Shards, shards) {
			return m.Seq, nil
		}
	}
	data, _ := proto.Marshal(&pb.ShardMap{Epoch: epoch, Shards: shards})
	ack, err := mv.js.Publish(ctx, subj, data)
	if err != nil {
		return 0, err
	}
	mv.log.Info("ownership record written", "shard", id, "epoch", epoch, "seq", ack.Sequence)
	return ack.Sequence, nil
}

// eachLast calls fn with the last message of every subject of shard id's
// stream, as of when it started.
func (mv *mover) eachLast(ctx context.Context, id string, fn func(*jskv.Msg) error) error {
	cons, err := mv.js.OrderedConsumer(ctx, mv.stream(id), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"$KV." + mv.bucket(id) + ".>"},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return err
	}
	if info.NumPending == 0 {
		return nil
	}
	for {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return err
		}
		n, done := 0, false
		for msg := range batch.Messages() {
			n++
			md, err := msg.Metadata()
			if err != nil {
				return err
			}
			m := &jskv.Msg{Subject: msg.Subject(), Seq: md.Sequence.Stream, Header: msg.Headers(), Data: msg.Data(), Time: md.Timestamp}
			if err := fn(m); err != nil {
				return err
			}
			if md.NumPending == 0 {
				// Everything as of the start is delivered; a fetch only
				// returns on its own once full or at its MaxWait.
				done = true
				break
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return err
		}
		if done {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if n == 0 {
			// Nothing came: the end, or a consumer being recreated after a
			// server failure. Only the consumer's own count decides; a pass
			// that stopped early would leave keys behind.
			if info, err := cons.Info(ctx); err == nil && info.NumPending == 0 {
				return nil
			}
		}
	}
}

// keyOf returns the user key of a shard message, or false for records.
func keyOf(subject string) (string, bool) {
	tok := subject[strings.LastIndexByte(subject, '.')+1:]
	if strings.HasPrefix(tok, "=") {
		return "", false
	}
	k, err := jskv.DecodeKey(tok)
	return k, err == nil
}

// prepareTarget readies shard t to receive keys: its floor goes above
// every revision the move can bring; keys it will receive whose message
// there is left from an earlier epoch (a moved marker, or a create its
// stale instance stored after it lost the key) become tombstones, so that
// none of them is served; then its ownership record for the new set.
func (mv *mover) prepareTarget(ctx context.Context, t string, epoch uint64, B []string, ha, hb *consistenthash.Map, bound uint64) error {
	if err := mv.ensureFloor(ctx, t, bound); err != nil {
		return err
	}
	ownSeq := uint64(1<<64 - 1) // no record of this move yet: everything there is old
	if m, found, err := jskv.LeaderGet(ctx, mv.s.nc, mv.stream(t), mv.subject(t, shardfmt.OwnerToken)); err != nil {
		return err
	} else if found {
		cur := &pb.ShardMap{}
		if proto.Unmarshal(m.Data, cur) == nil && cur.Epoch == epoch {
			ownSeq = m.Seq
		}
	}
	mv.mu.Lock()
	floor := mv.floors[t]
	mv.mu.Unlock()
	err := mv.eachLast(ctx, t, func(m *jskv.Msg) error {
		key, ok := keyOf(m.Subject)
		if !ok || ha.Get(key) == t || hb.Get(key) != t || m.Seq >= ownSeq {
			return nil
		}
		if shardfmt.MovedTo(m.Header) == "" && jskv.IsDeleteMarker(m.Header) {
			return nil // already absent
		}
		h := nats.Header{}
		h.Set(jskv.HeaderKVOperation, "DEL")
		h.Set(shardfmt.HeaderMoveTombstone, "1")
		h.Set(shardfmt.HeaderRevisionOffset, strconv.FormatUint(floor, 10))
		if f := m.Header.Get(shardfmt.HeaderFences); f != "" {
			h.Set(shardfmt.HeaderFences, f)
		}
		_, err := jskv.PublishIfLast(ctx, mv.js, m.Subject, nil, h, m.Seq)
		if errors.Is(err, jskv.ErrWrongLastSequence) {
			return nil // something newer: a later pass or the new owner's write
		}
		return err
	})
	if err != nil {
		return err
	}
	seq, err := mv.writeOwner(ctx, t, epoch, B)
	if err != nil {
		return err
	}
	mv.mu.Lock()
	mv.owners[t] = seq
	mv.mu.Unlock()
	return nil
}

// pass hands over every key of shard s that the new set gives to another
// shard, with moverWorkers in parallel.
func (mv *mover) pass(ctx context.Context, s string, ha, hb *consistenthash.Map) error {
	floor, err := mv.readFloor(ctx, s)
	if err != nil {
		return err
	}
	work := make(chan *jskv.Msg, moverWorkers)
	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range moverWorkers {
		wg.Go(func() {
			for m := range work {
				key, _ := keyOf(m.Subject)
				if err := mv.handover(wctx, s, hb.Get(key), key, m, floor); err != nil {
					once.Do(func() { firstErr = err; cancel() })
				}
			}
		})
	}
	err = mv.eachLast(wctx, s, func(m *jskv.Msg) error {
		key, ok := keyOf(m.Subject)
		if !ok || ha.Get(key) != s || hb.Get(key) == s {
			return nil
		}
		if to := shardfmt.MovedTo(m.Header); to != "" && to != hb.Get(key) {
			return nil // an earlier move's marker: not this shard's key any more
		}
		select {
		case work <- m:
			return nil
		case <-wctx.Done():
			return wctx.Err()
		}
	})
	close(work)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return err
}

// snapshot is what a key carries to its new shard.
type snapshot struct {
	rev       uint64
	live      bool
	value     []byte
	fences    string
	expiresMs int64
}

// handover hands key from shard s to shard t: the moved marker on s,
// conditioned on the message m it copies, then the copy on t.
func (mv *mover) handover(ctx context.Context, s, t, key string, m *jskv.Msg, floor uint64) error {
	subj := m.Subject
	var frozen time.Time
	for range handoverRetries {
		var snap snapshot
		if to := shardfmt.MovedTo(m.Header); to != "" {
			snap = markerSnapshot(m)
		} else {
			snap = snapshot{rev: shardfmt.MessageRevision(m.Seq, m.Header, floor), live: !jskv.IsDeleteMarker(m.Header),
				fences: m.Header.Get(shardfmt.HeaderFences)}
			if snap.live {
				snap.value = m.Data
				if at, ok := jskv.Expiry(m.Time, m.Header); ok {
					snap.expiresMs = at.UnixMilli()
					// A copy knows the instant its TTL was first set to end;
					// its own Nats-TTL was rounded up to whole seconds, and
					// moving it again must not add another rounding.
					if first, err := strconv.ParseInt(m.Header.Get(shardfmt.HeaderMovedExpires), 10, 64); err == nil && first > 0 && first < snap.expiresMs {
						snap.expiresMs = first
						at = time.UnixMilli(first)
					}
					if until := time.Until(at); until < ttlGuard {
						// Let the server expire it; hand over its marker.
						select {
						case <-ctx.Done():
							return ctx.Err()
						case <-time.After(until + 300*time.Millisecond):
						}
						if err := mv.reread(ctx, s, subj, &m); err != nil {
							return err
						}
						continue
					}
				}
			}
			h := nats.Header{}
			h.Set(jskv.HeaderKVOperation, "DEL")
			h.Set(shardfmt.HeaderMovedTo, t)
			h.Set(shardfmt.HeaderRevision, strconv.FormatUint(snap.rev, 10))
			if snap.fences != "" {
				h.Set(shardfmt.HeaderFences, snap.fences)
			}
			var body []byte
			if snap.live {
				h.Set(shardfmt.HeaderMovedLive, "1")
				body = snap.value
				if snap.expiresMs != 0 {
					h.Set(shardfmt.HeaderMovedExpires, strconv.FormatInt(snap.expiresMs, 10))
				}
			}
			frozen = time.Now()
			_, err := jskv.PublishIfLast(ctx, mv.js, subj, body, h, m.Seq)
			if err != nil {
				if errors.Is(err, jskv.ErrWrongLastSequence) || errors.Is(err, apierr.ReasonJetStreamBusy) {
					if err := mv.reread(ctx, s, subj, &m); err != nil {
						return err
					}
					continue
				}
				return err
			}
		}
		if err := mv.copyTo(ctx, t, key, snap); err != nil {
			return err
		}
		if !frozen.IsZero() { // a marker found in place froze earlier, under another drive
			mv.freeze.observe(time.Since(frozen))
		}
		return nil
	}
	return fmt.Errorf("key on shard %s kept changing under %d hand-over attempts", s, handoverRetries)
}

func (mv *mover) reread(ctx context.Context, s, subj string, m **jskv.Msg) error {
	nm, found, err := jskv.LeaderGet(ctx, mv.s.nc, mv.stream(s), subj)
	if err != nil {
		return err
	}
	if !found {
		return errors.New("a key's subject vanished from its shard during a move")
	}
	*m = nm
	return nil
}

func markerSnapshot(m *jskv.Msg) snapshot {
	snap := snapshot{fences: m.Header.Get(shardfmt.HeaderFences), live: m.Header.Get(shardfmt.HeaderMovedLive) == "1"}
	snap.rev, _ = strconv.ParseUint(m.Header.Get(shardfmt.HeaderRevision), 10, 64)
	if snap.live {
		snap.value = m.Data
		snap.expiresMs, _ = strconv.ParseInt(m.Header.Get(shardfmt.HeaderMovedExpires), 10, 64)
	}
	return snap
}

// copyTo writes snap as key's message on shard t, unless t already has
// this copy or something newer (a write after the hand-over).
func (mv *mover) copyTo(ctx context.Context, t, key string, snap snapshot) error {
	subj := mv.subject(t, jskv.EncodeKey(key))
	if err := mv.ensureFloor(ctx, t, snap.rev); err != nil {
		return err
	}
	mv.mu.Lock()
	ownSeq, ok := mv.owners[t]
	mv.mu.Unlock()
	if !ok {
		return fmt.Errorf("shard %s was not prepared", t)
	}
	// First guess: the new owner has no message of the key (true for a new
	// shard); a wrong guess is refused by the server and read properly.
	var tseq uint64
	for attempt := range handoverRetries {
		if attempt > 0 {
			cur, found, err := jskv.LeaderGet(ctx, mv.s.nc, mv.stream(t), subj)
			if err != nil {
				return err
			}
			tseq = 0
			if found {
				tseq = cur.Seq
				if cur.Seq > ownSeq && shardfmt.MovedTo(cur.Header) == "" {
					return nil // copied already, maybe written since
				}
			}
		}
		h := nats.Header{}
		h.Set(shardfmt.HeaderRevision, strconv.FormatUint(snap.rev, 10))
		if snap.fences != "" {
			h.Set(shardfmt.HeaderFences, snap.fences)
		}
		var body []byte
		live := snap.live
		if live && snap.expiresMs != 0 {
			left := time.Until(time.UnixMilli(snap.expiresMs))
			if left <= 0 {
				live = false
			} else {
				h.Set(jskv.HeaderTTL, jskv.TTLHeader(left.Milliseconds()+1))
				h.Set(shardfmt.HeaderMovedExpires, strconv.FormatInt(snap.expiresMs, 10))
			}
		}
		if live {
			body = snap.value
		} else {
			h.Set(jskv.HeaderKVOperation, "DEL")
		}
		_, err := jskv.PublishIfLast(ctx, mv.js, subj, body, h, tseq)
		if err == nil {
			mv.moved.Add(1)
			return nil
		}
		if !errors.Is(err, jskv.ErrWrongLastSequence) {
			return err
		}
	}
	return fmt.Errorf("key on shard %s kept changing under %d copy attempts", t, handoverRetries)
}

// estimateMove counts the keys of shards that set b would hand over: each
// shard's key subjects times the share of its buckets that change owner.
func estimateMove(ctx context.Context, js jetstream.JetStream, subj subjects.Set, a, b []string) uint64 {
	ha, hb := consistenthash.New(a), consistenthash.New(b)
	own, lose := map[string]int{}, map[string]int{}
	for i := range consistenthash.Buckets {
		oa := ha.Owner(i)
		own[oa]++
		if hb.Owner(i) != oa {
			lose[oa]++
		}
	}
	var total uint64
	for _, id := range a {
		if lose[id] == 0 {
			continue
		}
		st, err := js.Stream(ctx, "KV_"+subj.ShardBucket(id))
		if err != nil {
			continue
		}
		n, err := keySubjects(ctx, st, subj.ShardBucket(id))
		if err != nil {
			continue
		}
		total += n * uint64(lose[id]) / uint64(own[id])
	}
	return total
}

// changedOwners lists the shards that gain and that lose hash buckets when
// the set goes from ha's to hb's.
func changedOwners(ha, hb *consistenthash.Map) (gains, loses map[string]bool) {
	gains, loses = map[string]bool{}, map[string]bool{}
	for i := range consistenthash.Buckets {
		if oa, ob := ha.Owner(i), hb.Owner(i); oa != ob {
			loses[oa], gains[ob] = true, true
		}
	}
	return gains, loses
}

// forgetShardState drops the floors and ownership records read for an
// earlier drive: a new one reads them again.
func (mv *mover) forgetShardState() {
	mv.mu.Lock()
	mv.floors, mv.owners = map[string]uint64{}, map[string]uint64{}
	mv.mu.Unlock()
}

package storage

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/shardfmt"
	"github.com/latchkey/latchkey/kit/telemetry"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
)

// LimitMarkerTTL is how long the server keeps the marker it writes when a
// key's TTL expires. Views learn of expiries from these markers, so a view
// whose consumer stalls for longer than this may miss one; the monitor
// resumes stalled views much sooner.
const LimitMarkerTTL = 15 * time.Minute

const (
	maxWriteAttempts = 16
	monitorInterval  = 5 * time.Second
	probeTimeout     = 3 * time.Second
	// lagTolerance is how long the view may trail a write this instance
	// saw acknowledged before the monitor probes it and, if it does not
	// catch up, refuses stale reads and restarts its consumer.
	lagTolerance = time.Second
	// clockAllowance is how far apart the clocks of latchkey hosts and NATS
	// servers may be (docs/CORRECTNESS.md, "TTL instants"): expiry instants
	// are on the server's clock, the guard is measured on ours.
	clockAllowance = 100 * time.Millisecond
	// expiryPoll is how often a write waiting for the server to expire its
	// base re-reads the key when the view has not shown the change; the
	// view normally wakes it first.
	expiryPoll = 100 * time.Millisecond
	// confirmAttempts bounds how often a linearizable get re-reads a key
	// that changed between its read and the read's quorum confirmation.
	confirmAttempts = 4
)

// shard serves one shard id from one KV bucket.
type shard struct {
	id          string
	bucket      string
	stream      string
	subjPfx     string // "$KV.<bucket>."
	msgGet      string // leader read API subject
	barrierSubj string // "$KV.<bucket>.=sync"
	nc          *nats.Conn
	js          jetstream.JetStream
	log         *slog.Logger
	maxValue    int
	guard       time.Duration
	unsafe      Unsafe
	tokens      *tokenBound
	instance    string        // random, per open shard: prefix of write ids
	writes      atomic.Uint64 // write ids handed out

	view    *view
	feed    *watchHub // watch feeds fed by onMsg (watch.go)
	locks   keyLocks
	barrier barrier
	healthy atomic.Bool
	// linGets counts linearizable gets in flight; batchedReads those
	// answered from the view behind a shared barrier (see getBatched).
	linGets      atomic.Int64
	batchedReads atomic.Int64
	// acked is the highest stream sequence this instance saw acknowledged
	// (its own writes and barriers): the view must reach it soon.
	acked        atomic.Uint64
	pendingSince atomic.Int64 // unix nanos: when the view last fell behind acked
	// kick asks the monitor to probe now (a sync found the view behind).
	kick chan struct{}

	ccMu sync.Mutex
	cc   jetstream.ConsumeContext

	stop context.CancelFunc
	done chan struct{}
}

func openShard(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, id, bucket string, cfg Config, tokens *tokenBound) (*shard, error) {
	sh := &shard{
		id:          id,
		bucket:      bucket,
		stream:      "KV_" + bucket,
		subjPfx:     "$KV." + bucket + ".",
		barrierSubj: "$KV." + bucket + "." + barrierToken,
		nc:          nc,
		js:          js,
		log:         cfg.Logger.With("shard", id, "bucket", bucket),
		maxValue:    cfg.MaxValueBytes,
		guard:       cfg.TTLGuard,
		unsafe:      cfg.Unsafe,
		tokens:      tokens,
		view:        newView(),
		done:        make(chan struct{}),
		kick:        make(chan struct{}, 1),
	}
	sh.msgGet = "$JS.API.STREAM.MSG.GET." + sh.stream
	sh.instance = rand.Text()[:16]
	sh.feed = newWatchHub(sh, cfg.EventConn)
	sh.barrier.publish = sh.publishBarrier
	if err := sh.createBucket(ctx, cfg.Replicas); err != nil {
		return nil, err
	}
	if err := sh.startConsumer(ctx, 0); err != nil {
		return nil, err
	}
	if err := sh.syncRetrying(ctx); err != nil {
		sh.stopConsumer()
		return nil, fmt.Errorf("storage: load view of %s: %w", bucket, err)
	}
	sh.healthy.Store(true)
	openShards.add(sh)
	mctx, cancel := context.WithCancel(context.Background())
	sh.stop = cancel
	go sh.monitor(mctx)
	return sh, nil
}

// createBucket creates the shard's bucket or brings an existing one to the
// configuration below, retrying while a forming cluster cannot place it.
func (sh *shard) createBucket(ctx context.Context, replicas int) error {
	_, err := jskv.EnsureBucket(ctx, sh.js, jetstream.KeyValueConfig{
		Bucket:         sh.bucket,
		Description:    "latchkey shard " + sh.id,
		History:        1,
		Replicas:       replicas,
		Storage:        jetstream.FileStorage,
		LimitMarkerTTL: LimitMarkerTTL,
	}, sh.log)
	return err
}

// startConsumer feeds the view from an ordered consumer: from the last
// message of every key at first, from start after a stall.
func (sh *shard) startConsumer(ctx context.Context, start uint64) error {
	occ := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{sh.subjPfx + ">"},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	}
	if start > 0 {
		occ.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		occ.OptStartSeq = start
	}
	cons, err := sh.js.OrderedConsumer(ctx, sh.stream, occ)
	if err != nil {
		return fmt.Errorf("storage: consumer on %s: %w", sh.stream, err)
	}
	// Short heartbeats: a consumer lost with a server is noticed and
	// recreated within about two seconds, which bounds how long scans wait.
	cc, err := cons.Consume(sh.onMsg, jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		sh.log.Debug("view consumer", "err", err)
	}))
	if err != nil {
		return fmt.Errorf("storage: consume %s: %w", sh.stream, err)
	}
	sh.ccMu.Lock()
	old := sh.cc
	sh.cc = cc
	sh.ccMu.Unlock()
	if old != nil {
		old.Stop()
	}
	return nil
}

func (sh *shard) stopConsumer() {
	sh.ccMu.Lock()
	defer sh.ccMu.Unlock()
	if sh.cc != nil {
		sh.cc.Stop()
		sh.cc = nil
	}
}

func (sh *shard) onMsg(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	h := m.Headers()
	seq := md.Sequence.Stream
	token := subjectToken(m.Subject())
	switch token {
	case floorToken:
		if f, ok := shardfmt.ParseFloor(m.Data()); ok {
			sh.view.raiseFloor(f)
		}
	case ownerToken:
		if o, ok := parseOwnership(seq, m.Data()); ok {
			sh.view.setOwner(o)
			sh.log.Info("ownership record applied", "seq", seq, "epoch", o.epoch)
		}
	}
	key, err := decodeKey(token)
	moved := shardfmt.MovedTo(h) != ""
	orphan := err == nil && !moved && sh.isOrphan(key, seq, h)
	rev := sh.view.apply(key, err == nil, seq, shardfmt.ReadRevInfo(h), shardfmt.IsServerMarker(h), moved, orphan, expiryNanos(md.Timestamp, h), isLive(h) && !moved, m.Data(), h.Get(hdrFences))
	if md.NumPending == 0 {
		sh.view.caughtUp(seq)
	}
	// An orphan is never served, so it is no event either (the feed's
	// position still moves past it).
	sh.feed.observe(key, err == nil && !orphan, seq, rev, md.Timestamp, h, m.Data())
}

// monitor checks the view's contact with its stream by a barrier, marks
// the view unhealthy (stale reads refused) when that fails, and restarts a
// consumer that stopped delivering: ordered consumers have been seen not to
// resume after reconnects and leader changes. It probes an idle view every
// monitorInterval, a view that trails an acknowledged write for
// lagTolerance, and at once when a sync found the view behind.
func (sh *shard) monitor(ctx context.Context) {
	defer close(sh.done)
	t := time.NewTicker(lagTolerance / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !sh.needsProbe() {
				continue
			}
		case <-sh.kick:
		}
		err := sh.probe(ctx)
		if ctx.Err() != nil {
			return
		}
		if sh.healthy.Swap(err == nil) != (err == nil) {
			sh.log.Info("view health changed", "healthy", err == nil, "err", err)
		}
	}
}

// needsProbe says whether the view has been idle for monitorInterval, has
// trailed an acknowledged write for lagTolerance, or is marked unhealthy.
func (sh *shard) needsProbe() bool {
	return !sh.healthy.Load() || time.Since(sh.view.lastProgress()) >= monitorInterval || sh.lagging()
}

// lagging says whether the view has trailed a write this instance saw
// acknowledged for lagTolerance without applying anything meanwhile: a
// stale read would then miss a write acknowledged over a second ago. (An
// idle view's last progress is old; what counts is how long it has been
// behind, so the wait starts at pendingSince at the earliest.)
func (sh *shard) lagging() bool {
	if sh.view.appliedSeq() >= sh.acked.Load() {
		return false
	}
	since := time.Unix(0, sh.pendingSince.Load())
	if p := sh.view.lastProgress(); p.After(since) {
		since = p
	}
	return time.Since(since) >= lagTolerance
}

// probe publishes a barrier and waits for the view to apply it; a view
// that does not gets a new consumer from where it stopped.
func (sh *shard) probe(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	seq, err := sh.barrier.get(pctx)
	if err != nil {
		return err
	}
	if err = sh.view.wait(pctx, seq); err != nil && ctx.Err() == nil {
		applied := sh.view.appliedSeq()
		sh.log.Warn("view stalled; restarting its consumer", "applied", applied, "barrier", seq)
		rctx, rcancel := context.WithTimeout(ctx, probeTimeout)
		if rerr := sh.startConsumer(rctx, applied+1); rerr != nil {
			sh.log.Warn("view consumer restart failed", "err", rerr)
		}
		rcancel()
	}
	return err
}

func (sh *shard) close() {
	openShards.remove(sh)
	sh.feed.close()
	if sh.stop != nil {
		sh.stop()
		<-sh.done
	}
	sh.stopConsumer()
}

// sync waits until the view has applied every message acknowledged before
// sync was called, and shows every key as of then (waitCut).
func (sh *shard) sync(ctx context.Context) error {
	seq, err := sh.barrier.get(ctx)
	if err != nil {
		return err
	}
	if err := sh.view.waitCut(ctx, seq); err != nil {
		select { // let the monitor find out why, now rather than later
		case sh.kick <- struct{}{}:
		default:
		}
		return apierr.Errorf(apierr.ReasonViewBehind, "shard %s: the view did not catch up with the stream in time", sh.id)
	}
	return nil
}

// syncRetrying is sync for start-up: a stream created a moment ago may not
// have elected its leader yet ("no response from stream"), so failures are
// retried with backoff until ctx ends.
func (sh *shard) syncRetrying(ctx context.Context) error {
	for wait := 50 * time.Millisecond; ; wait = min(wait*2, time.Second) {
		err := sh.sync(ctx)
		if err == nil {
			return nil
		}
		sh.log.Warn("view not loaded yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

func (sh *shard) publishBarrier(ctx context.Context) (uint64, error) {
	ack, err := sh.js.PublishMsg(ctx, &nats.Msg{Subject: sh.barrierSubj})
	if err != nil {
		return 0, unavailable(sh.id, "scan barrier", err)
	}
	sh.noteAcked(ack.Sequence)
	return ack.Sequence, nil
}

// noteAcked records that the stream holds seq, which the view must reach.
// When the view had caught up with everything acknowledged before, a new
// wait for it starts now (pendingSince).
func (sh *shard) noteAcked(seq uint64) {
	for {
		cur := sh.acked.Load()
		if seq <= cur {
			return
		}
		if sh.view.appliedSeq() >= cur {
			sh.pendingSince.Store(time.Now().UnixNano())
		}
		if sh.acked.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// barrier hands out stream sequences that were assigned after the caller
// arrived. Callers arriving while a barrier message is in flight share the
// next one, so a burst of scans costs one publish per round trip.
type barrier struct {
	publish func(context.Context) (uint64, error)
	mu      sync.Mutex
	next    *flight
	running bool
}

type flight struct {
	done chan struct{}
	seq  uint64
	err  error
}

// busy reports whether a barrier publish is in flight, so that one more
// caller would share the next publish with others.
func (b *barrier) busy() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.running
}

func (b *barrier) get(ctx context.Context) (uint64, error) {
	b.mu.Lock()
	if b.next == nil {
		b.next = &flight{done: make(chan struct{})}
	}
	f := b.next
	if !b.running {
		b.running = true
		go b.run()
	}
	b.mu.Unlock()
	select {
	case <-f.done:
		return f.seq, f.err
	case <-ctx.Done():
		return 0, apierr.Errorf(apierr.ReasonTimeout, "scan barrier not acknowledged in time")
	}
}

func (b *barrier) run() {
	for {
		b.mu.Lock()
		f := b.next
		b.next = nil
		if f == nil {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		f.seq, f.err = b.publish(ctx)
		cancel()
		close(f.done)
	}
}

// leaderRead returns the key's current message as the stream leader has
// it. Direct gets are not used: followers may answer them with stale data.
// While the stream has no leader (no responders, timeouts, 503s) the read
// is retried until ctx ends: a read changes nothing.
func (sh *shard) leaderRead(ctx context.Context, key string) (base, error) {
	subject := sh.subjPfx + encodeKey(key)
	for wait := 25 * time.Millisecond; ; wait = min(wait*2, 500*time.Millisecond) {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		actx, span := telemetry.StartJetStream(actx, telemetry.JSGet, sh.stream)
		m, found, err := jskv.LeaderGet(actx, sh.nc, sh.stream, subject)
		if found {
			span.SetAttributes(telemetry.AttrRevision.Int64(int64(m.Seq)))
		}
		telemetry.End(span, 0, err)
		cancel()
		switch {
		case err == nil && !found:
			return base{}, nil
		case err == nil:
			b := base{seq: m.Seq, exp: expiryNanos(m.Time, m.Header), live: isLive(m.Header), fences: m.Header.Get(hdrFences), writeID: m.Header.Get(hdrWriteID)}
			b.after = m.Header.Get(hdrExpectSubj)
			b.marker = shardfmt.IsServerMarker(m.Header)
			if b.movedTo = shardfmt.MovedTo(m.Header); b.movedTo != "" {
				b.moved, b.live, b.value = true, false, nil
			}
			floor, _ := sh.view.floorAt()
			b.rev = shardfmt.ReadRevInfo(m.Header).Revision(m.Seq, b.marker, floor)
			if b.live {
				b.value = m.Data
			}
			return b, nil
		}
		select {
		case <-ctx.Done():
			return base{}, unavailable(sh.id, "leader read", err)
		case <-time.After(wait):
		}
	}
}

// write is one put or delete.
type write struct {
	key      string
	del      bool
	value    []byte
	ttlMs    int64
	expected *uint64
	fence    *pb.Fence
	handover bool // the router retries after the key's old shard said moved
}

// writeResult is the outcome of a write: wrote is false for a delete that
// found nothing to delete; rev is the key's revision afterwards, seq the
// stream sequence of its message.
type writeResult struct {
	seq   uint64
	rev   uint64
	wrote bool
	was   bool // the key held a value before the write
}

// plan checks the write's preconditions against cur and returns the fences
// header of the new message, or skip for a delete with nothing to do.
func (w *write) plan(cur base, unsafe Unsafe) (fencesHdr string, skip bool, err error) {
	if fencesHdr, err = checkFence(cur.fences, w.fence, !unsafe.NoFenceBounds); err != nil {
		return "", false, err
	}
	if w.ttlMs > 0 && cur.fences != "" && !unsafe.AllowFencedTTL {
		// The expiry marker would carry no fences: a holder of an older
		// token could then write the key again.
		return "", false, apierr.Errorf(apierr.ReasonFencedKeyTTL,
			"the key carries fences (it was written under a lock), so it cannot take a TTL: its expiry would erase them")
	}
	if w.expected != nil {
		exp := *w.expected
		if exp == 0 && cur.live {
			return "", false, apierr.Errorf(apierr.ReasonRevisionMismatch,
				"revision mismatch: expected the key to be absent, it is at revision %d", cur.rev)
		}
		if exp != 0 && (!cur.live || cur.rev != exp) {
			if !cur.live {
				return "", false, apierr.Errorf(apierr.ReasonRevisionMismatch,
					"revision mismatch: expected revision %d, the key is absent", exp)
			}
			return "", false, apierr.Errorf(apierr.ReasonRevisionMismatch,
				"revision mismatch: expected revision %d, the key is at %d", exp, cur.rev)
		}
	}
	// Deleting an absent key writes nothing, unless the write's fence must
	// be recorded so that older holders are refused from now on.
	if w.del && !cur.live && !fenceRaises(cur.fences, w.fence) {
		return "", true, nil
	}
	return fencesHdr, false, nil
}

// apply runs the write as a publish conditioned on the key's current
// message, so that checking preconditions and fences and writing are one
// atomic step; a lost race means a fresh leader read and another try.
func (sh *shard) apply(ctx context.Context, w *write) (writeResult, error) {
	unlock, err := sh.locks.lock(ctx, w.key)
	if err != nil {
		return writeResult{}, apierr.Errorf(apierr.ReasonTimeout, "shard %s: write queued too long", sh.id)
	}
	defer unlock()
	subj := sh.subjPfx + encodeKey(w.key)
	id := sh.writeID()
	cur, authoritative := sh.view.guess(w.key), false
	refresh := func() error {
		b, err := sh.leaderRead(ctx, w.key)
		if err != nil {
			return err
		}
		cur, authoritative = b, true
		return nil
	}
	busy := 0 // refusals waited out by jskv.WaitInFlight
	// unsure: an attempt conditioned on unsureBase was refused in a way
	// that does not rule out that it was stored. At a partition heal the
	// deposed leader, still believing it leads, can answer a publish
	// "wrong last sequence" (10164 at once, for a subject it had in
	// flight; or 10071 with its stale last sequence) while the real
	// leader stores it (TestReproAmbiguousPublishAtHeal). When the key
	// has moved on by the re-read, the write id cannot tell whether this
	// write was among the messages in between; retrying would apply a
	// put twice and refusing a CAS would deny a write that happened, so
	// unless the key's message proves otherwise the answer is a 503.
	unsure, unsureBase := false, uint64(0)
	for attempt := 0; attempt < maxWriteAttempts; attempt++ {
		if sh.guarded(cur) {
			// The server may expire cur under a write conditioned on it
			// and purge the write with its expiry marker: let the server
			// expire it (or someone replace it) and write on what follows.
			if cur, authoritative, err = sh.awaitExpiry(ctx, w.key, cur); err != nil {
				return writeResult{}, err
			}
			continue
		}
		// What the view had applied when it judged cur: a base newer than
		// that may follow an ownership record the view has not seen.
		judgedAt := sh.view.appliedSeq()
		if err := sh.verdict(w.key, cur, w.handover); err != nil {
			// Decided on the stream's state only: a guess may be stale.
			if !authoritative {
				if err := refresh(); err != nil {
					return writeResult{}, err
				}
				continue
			}
			return writeResult{}, err
		}
		fencesHdr, skip, err := w.plan(cur, sh.unsafe)
		if err != nil || skip {
			if !authoritative {
				if err := refresh(); err != nil {
					return writeResult{}, err
				}
				continue
			}
			if err != nil {
				return writeResult{}, err
			}
			return writeResult{seq: cur.seq, rev: cur.rev}, nil
		}
		off, err := sh.offsetFor(ctx, cur)
		if err != nil {
			return writeResult{}, err
		}
		msg := &nats.Msg{Subject: subj, Header: nats.Header{}}
		msg.Header.Set(hdrExpectSubj, strconv.FormatUint(cur.seq, 10))
		msg.Header.Set(hdrWriteID, id)
		if off > 0 {
			msg.Header.Set(hdrRevisionOffset, strconv.FormatUint(off, 10))
		}
		if fencesHdr != "" {
			msg.Header.Set(hdrFences, fencesHdr)
		}
		if w.del {
			msg.Header.Set(hdrKVOperation, kvOpDelete)
		} else {
			msg.Data = w.value
			if w.ttlMs > 0 {
				msg.Header.Set(hdrTTL, ttlSeconds(w.ttlMs))
			}
		}
		sent := time.Now()
		pctx, span := telemetry.StartJetStream(ctx, telemetry.JSPublish, sh.stream)
		ack, err := sh.js.PublishMsg(pctx, msg)
		endPublish(span, ack, err)
		if err == nil {
			sh.noteAcked(ack.Sequence)
			if sh.ackedLate(cur) {
				marker, lost, err := sh.swallowed(ctx, subj, ack.Sequence, sent)
				if err != nil {
					return writeResult{}, err
				}
				if lost {
					sh.log.Warn("a write landed as its base expired and the server's expiry marker purged it; writing again on the marker",
						"revision", ack.Sequence, "marker", marker.seq)
					cur, authoritative = marker, true
					continue
				}
			}
			written := base{seq: ack.Sequence, rev: ack.Sequence + off, live: !w.del, fences: fencesHdr}
			if w.ttlMs > 0 {
				// The server stamps the message at or after sent: an expiry
				// counted from sent is never later than the server's.
				written.exp = sent.Add(time.Duration(jskv.CeilSeconds(w.ttlMs)) * time.Second).UnixNano()
			}
			sh.view.remember(w.key, written)
			if cur.seq == 0 || cur.seq > judgedAt {
				if err := sh.postCheck(ctx, w.key, cur.seq, ack.Sequence); err != nil {
					return writeResult{}, err
				}
			}
			return writeResult{seq: ack.Sequence, rev: written.rev, wrote: true, was: cur.live}, nil
		}
		switch {
		case isWrongLastSequence(err):
		case errors.Is(err, jetstream.ErrNoStreamResponse), isNotReady(err):
			// Nothing was written (nobody received the message, or a new
			// leader cannot check the condition yet): wait and try again.
			select {
			case <-ctx.Done():
				return writeResult{}, unavailable(sh.id, "write", err)
			case <-time.After(50 * time.Millisecond):
			}
		default:
			// A timeout is ambiguous (the write may have landed): retrying
			// could apply it twice, so the caller hears 503 and decides.
			return writeResult{}, unavailable(sh.id, "write", err)
		}
		tried, was := cur.seq, cur.live
		if isWrongLastSequence(err) && !unsure && !refusedPast(err, tried) {
			unsure, unsureBase = true, tried
		}
		if err := refresh(); err != nil {
			return writeResult{}, err
		}
		if cur.writeID == id {
			// The refusal was wrong: the key's last message is this very
			// write (JetStream answers 10164/10071 for some writes it
			// stored when a partition heals). Writing again would apply it
			// twice; refusing a CAS would deny a write that happened.
			sh.noteAcked(cur.seq)
			sh.view.remember(w.key, cur)
			if tried == 0 || tried > judgedAt {
				if err := sh.postCheck(ctx, w.key, tried, cur.seq); err != nil {
					return writeResult{}, err
				}
			}
			return writeResult{seq: cur.seq, rev: cur.rev, wrote: true, was: was}, nil
		}
		sh.view.remember(w.key, cur)
		if unsure && cur.seq != unsureBase {
			// The key moved on, and not to this write. Had this write been
			// stored on unsureBase, it would have been the key's next message
			// and has been replaced since; a message written on unsureBase
			// itself proves it was not (nor can it be any more).
			if cur.after != strconv.FormatUint(unsureBase, 10) {
				return writeResult{}, apierr.Errorf(apierr.ReasonJetStreamWrite,
					"shard %s: the write's outcome is unknown: JetStream refused it in a way that does not rule out that it was stored, and the key has changed since; read the key to find out", sh.id)
			}
			unsure = false
		}
		if isWrongLastSequence(err) && authoritative && cur.seq == tried {
			// Refused although the key had not moved: another write on it
			// (another instance's, or a read's confirmation) was in flight.
			// Wait it out; it does not count as a lost race.
			busy++
			if err := jskv.WaitInFlight(ctx, "shard "+sh.id+" key", busy); err != nil {
				return writeResult{}, err
			}
			attempt--
		}
	}
	return writeResult{}, apierr.Errorf(apierr.ReasonContention,
		"shard %s: the key changed under %d write attempts in a row; retry", sh.id, maxWriteAttempts)
}

// offsetFor returns the revision offset of a write conditioned on cur
// (revision.go). A base that is the server's own marker, read from the
// leader, needs a floor applied at or after the marker: the view is waited
// for until it has reached the marker (it normally has).
func (sh *shard) offsetFor(ctx context.Context, cur base) (uint64, error) {
	floor, applied := sh.view.floorAt()
	if cur.marker && applied < cur.seq {
		wctx, cancel := context.WithTimeout(ctx, batchedReadWait)
		err := sh.view.wait(wctx, cur.seq)
		cancel()
		if err != nil {
			return 0, apierr.Errorf(apierr.ReasonViewBehind, "shard %s: the view did not reach the key's expiry marker in time", sh.id)
		}
		floor, _ = sh.view.floorAt()
	}
	return writeOffset(cur, floor), nil
}

// writeID names one write of this shard instance (Latchkey-Write-Id).
func (sh *shard) writeID() string {
	return sh.instance + "-" + strconv.FormatUint(sh.writes.Add(1), 36)
}

// endPublish ends a publish span; a lost compare-and-set is an expected
// outcome (409), not a failure of the span.
func endPublish(span trace.Span, ack *jetstream.PubAck, err error) {
	switch {
	case err == nil:
		span.SetAttributes(telemetry.AttrRevision.Int64(int64(ack.Sequence)))
		telemetry.End(span, 0, nil)
	case isWrongLastSequence(err):
		telemetry.End(span, 409, err)
	default:
		telemetry.End(span, 0, err)
	}
}

func isWrongLastSequence(err error) bool {
	var ae *jetstream.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

// refusedPast says whether err is a 10071 naming a last sequence of the
// subject above tried: the server that refused knew a committed message of
// the key newer than the write's base, so every leader refuses the write
// too, whichever server answered. A 10164 (another write of the subject in
// flight on the answering server) or a 10071 naming a sequence at or below
// tried may come from a deposed leader and says nothing of the real one.
func refusedPast(err error, tried uint64) bool {
	var ae *jetstream.APIError
	if !errors.As(err, &ae) || ae.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
		return false
	}
	i := strings.LastIndexByte(ae.Description, ':')
	if i < 0 {
		return false
	}
	last, perr := strconv.ParseUint(strings.TrimSpace(ae.Description[i+1:]), 10, 64)
	return perr == nil && last > tried
}

// isNotReady reports JetStream's "expected last sequence per subject
// temporarily unavailable" (10163), seen right after a leader change: the
// message was refused unwritten.
func isNotReady(err error) bool {
	var ae *jetstream.APIError
	return errors.As(err, &ae) && ae.ErrorCode == 10163
}

// unavailable wraps a JetStream failure as a 503, keeping *apierr.Errors.
func unavailable(shardID, what string, err error) error {
	var ae *apierr.Error
	if errors.As(err, &ae) {
		return ae
	}
	if e := jskv.TooLargeError("shard "+shardID+": "+what, err); e != nil {
		return e
	}
	// From is the one place that says a passed deadline is a timeout.
	if errors.Is(apierr.From(err), apierr.ReasonTimeout) || errors.Is(err, nats.ErrTimeout) {
		return apierr.Errorf(apierr.ReasonTimeout, "shard %s: %s timed out: JetStream did not answer in time", shardID, what)
	}
	return apierr.Errorf(apierr.ReasonJetStream, "shard %s: %s failed: %v", shardID, what, err)
}

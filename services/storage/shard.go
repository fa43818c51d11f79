package storage

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/shardfmt"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
	// startSyncAttempt bounds one wait of a starting instance for its view
	// to load (syncRetrying); a large stream takes several.
	startSyncAttempt = 10 * time.Second
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
	sh.instance = rand.Text()[:16]
	sh.feed = newWatchHub(sh, cfg.EventConn)
	sh.barrier.publish = sh.publishBarrier
	if err := sh.createBucket(ctx, cfg.Replicas); err != nil {
		return nil, err
	}
	if err := sh.startConsumerRetrying(ctx); err != nil {
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

// startConsumerRetrying is startConsumer for start-up: a stream created a
// moment ago on a forming or busy cluster may not have a leader to create
// the consumer yet (CI saw "consumer on ...: context deadline exceeded"
// on a fresh 3-node cluster), so attempts are retried until ctx ends.
func (sh *shard) startConsumerRetrying(ctx context.Context) error {
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		err := sh.startConsumer(ctx, 0)
		if err == nil {
			return nil
		}
		sh.log.Warn("cannot start the view's consumer yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
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
	movedLive := moved && h.Get(shardfmt.HeaderMovedLive) == "1"
	rev := sh.view.apply(key, err == nil, seq, shardfmt.ReadRevInfo(h), shardfmt.IsServerMarker(h), moved, movedLive, orphan, expiryNanos(md.Timestamp, h), isLive(h) && !moved, m.Data(), h.Get(hdrFences))
	if md.NumPending == 0 {
		sh.view.caughtUp(seq)
	}
	// An orphan is never served, so it is no event either (the feed's
	// position still moves past it).
	sh.feed.observe(key, err == nil && !orphan, seq, rev, md.Timestamp, h, m.Data())
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

package jskv_test

// These tests pin down raw nats-server v2.15.2 behaviour that latchkey
// designs around (FIELD-NOTES: "TTL expiry can swallow an acknowledged
// write"), so we notice when an upstream fix lands. They drive JetStream
// directly, without latchkey.
//
// The server side, in filestore.go: expireMsgs collects the messages whose
// Nats-TTL ran out in one pass of its timer (about every 250 ms) and, one
// message after the other, checks against the store only that the message
// is still its subject's last (shouldProcessSdmLocked) and then proposes an
// unconditioned marker with Nats-Marker-Reason: MaxAge and Nats-Rollup: sub
// (handleRemovalOrSdm). A conditional write on the expiring message that
// the leader accepted before that check but applies after it is
// acknowledged, and then purged by the marker's rollup. On a 3-node cluster
// the window is as long as the leader's commit backlog: milliseconds for a
// burst of writes accepted just before the pass.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server header names that jskv does not export.
const (
	hdrRollup    = "Nats-Rollup"
	hdrSeq       = "Nats-Sequence"   // on republished messages
	hdrSubject   = "Nats-Subject"    // on republished messages
	hdrTimeStamp = "Nats-Time-Stamp" // on republished messages: when the leader proposed it
)

// expiryRig is a 3-node cluster with one KV-style R3 bucket (History 1)
// whose stored messages are republished on core NATS: the leader
// republishes each one as it applies it, which is the quickest way for a
// client to see the server's expiry markers appear.
type expiryRig struct {
	t       *testing.T
	bucket  string
	stream  string
	nc      *nats.Conn // to the stream leader: writes and leader reads
	js      jetstream.JetStream
	watchNC *nats.Conn

	mu    sync.Mutex
	seen  map[string][]seenMsg // by subject, in arrival order
	armed *markerArm
}

// seenMsg is one republished message.
type seenMsg struct {
	subject string
	seq     uint64
	ts      time.Time // leader's proposal time (the marker's: its check time)
	arrived time.Time
	hdr     nats.Header
}

func (m seenMsg) isMarker() bool { return m.hdr.Get(jskv.HeaderMarkerReason) != "" }

// markerArm closes fired when the first marker under prefix arrives.
type markerArm struct {
	prefix string
	fired  chan struct{}
	at     seenMsg
}

func newExpiryRig(t *testing.T, bucket string, markerTTL time.Duration) *expiryRig {
	t.Helper()
	c := natstest.NewCluster(t)
	nc0 := natstest.Connect(t, c.URLs())
	js0, err := jetstream.New(nc0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	kvCfg := jetstream.KeyValueConfig{
		Bucket: bucket, History: 1, Replicas: 3, LimitMarkerTTL: markerTTL,
		RePublish: &jetstream.RePublish{Source: "$KV." + bucket + ".>", Destination: "rp." + bucket + ".>"},
	}
	if _, err := jskv.EnsureBucket(ctx, js0, kvCfg, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	r := &expiryRig{t: t, bucket: bucket, stream: "KV_" + bucket, seen: map[string][]seenMsg{}}
	leader := -1
	for leader < 0 && ctx.Err() == nil {
		if leader = c.StreamLeader(r.stream); leader < 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if leader < 0 {
		t.Fatal("stream has no leader")
	}
	// Writes and the watch go straight to the leader: no route hop
	// between what we see and what we fire.
	url := c.Nodes[leader].ClientURL()
	r.nc = natstest.Connect(t, url)
	if r.js, err = jetstream.New(r.nc); err != nil {
		t.Fatal(err)
	}
	r.watchNC = natstest.Connect(t, url)
	sub, err := r.watchNC.Subscribe("rp."+bucket+".>", r.onRepublished)
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := r.watchNC.Flush(); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *expiryRig) onRepublished(m *nats.Msg) {
	now := time.Now()
	seq, _ := strconv.ParseUint(m.Header.Get(hdrSeq), 10, 64)
	ts, _ := time.Parse(time.RFC3339Nano, m.Header.Get(hdrTimeStamp))
	s := seenMsg{subject: m.Header.Get(hdrSubject), seq: seq, ts: ts, arrived: now, hdr: m.Header}
	subj := m.Header.Get(hdrSubject)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen[subj] = append(r.seen[subj], s)
	if a := r.armed; a != nil && s.isMarker() && strings.HasPrefix(subj, a.prefix) {
		a.at = s
		close(a.fired)
		r.armed = nil
	}
}

// arm returns a channel closed when the first marker for a subject under
// prefix arrives; wait for it with firstMarker.
func (r *expiryRig) arm(prefix string) *markerArm {
	a := &markerArm{prefix: prefix, fired: make(chan struct{})}
	r.mu.Lock()
	r.armed = a
	r.mu.Unlock()
	return a
}

func (r *expiryRig) firstMarker(a *markerArm, d time.Duration) (seenMsg, bool) {
	select {
	case <-a.fired:
		r.mu.Lock()
		defer r.mu.Unlock()
		return a.at, true
	case <-time.After(d):
		return seenMsg{}, false
	}
}

// markerOf returns the first marker seen on subj.
func (r *expiryRig) markerOf(subj string) (seenMsg, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.seen[subj] {
		if m.isMarker() {
			return m, true
		}
	}
	return seenMsg{}, false
}

// seenSeq returns the republished message with sequence seq on subj.
func (r *expiryRig) seenSeq(subj string, seq uint64) (seenMsg, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.seen[subj] {
		if m.seq == seq {
			return m, true
		}
	}
	return seenMsg{}, false
}

func (r *expiryRig) subject(key string) string { return "$KV." + r.bucket + "." + key }

// putTTL publishes (asynchronously) one message per subject with
// Nats-TTL ttl ("" = none), all at once, and returns each subject's
// sequence.
func (r *expiryRig) putTTL(subjects []string, ttl string) map[string]uint64 {
	r.t.Helper()
	futs := make([]jetstream.PubAckFuture, len(subjects))
	for i, s := range subjects {
		h := nats.Header{}
		if ttl != "" {
			h.Set(jskv.HeaderTTL, ttl)
		}
		f, err := r.js.PublishMsgAsync(&nats.Msg{Subject: s, Header: h, Data: []byte("v")})
		if err != nil {
			r.t.Fatal(err)
		}
		futs[i] = f
	}
	seqs := make(map[string]uint64, len(subjects))
	for i, f := range futs {
		select {
		case ack := <-f.Ok():
			seqs[subjects[i]] = ack.Sequence
		case err := <-f.Err():
			r.t.Fatalf("put %s: %v", subjects[i], err)
		case <-time.After(10 * time.Second):
			r.t.Fatalf("put %s: no ack", subjects[i])
		}
	}
	return seqs
}

// shot is one conditional write fired at a key that is about to expire.
type shot struct {
	subj     string
	expected uint64 // the TTL'd message's sequence
	fut      jetstream.PubAckFuture
}

// fireConditional publishes a value on subj conditioned on expected being
// the subject's last sequence, without waiting for the ack.
func (r *expiryRig) fireConditional(s *shot) {
	f, err := r.js.PublishMsgAsync(&nats.Msg{Subject: s.subj, Data: []byte("write")},
		jetstream.WithExpectLastSequencePerSubject(s.expected))
	if err != nil {
		r.t.Fatal(err)
	}
	s.fut = f
}

// Aiming at the expiry pass. What was measured here (2 cores, 3 nodes in
// one process), and why the technique is what it is:
//
//   - A pass proposes its markers fast (500 in 2-10 ms), but the leader
//     applies, acks and republishes them 20-90 ms later. By the time a
//     client sees the first marker the pass is over: writes fired on that
//     signal are all refused (10071/10164). Aim by the clock instead.
//   - The pass runs 250 ms (resetAgeChk's floor) after the previous pass
//     ended, plus 0.5-50 ms of timer and lock delay on a busy box. A pilot
//     key that expires one pass earlier dates it: its marker's
//     Nats-Time-Stamp is when the leader proposed it.
//   - A write is lost when the leader accepts it before the pass checks its
//     key and has not applied it yet. A burst of a few hundred writes
//     takes milliseconds to commit, so a burst accepted shortly before the
//     pass is lost whole; accepted after, refused; long before, kept. How
//     long the leader takes to accept a burst varies by several ms, so one
//     burst hits about half of the rounds.
//   - Hence aimGroups interleaved bursts (key i in group i%aimGroups, so
//     every group spreads over the whole pass) fired aimStep apart from
//     aimFrom before the predicted pass: some group nearly always lands in
//     the window.
const (
	expiryRearm = 250 * time.Millisecond
	aimGroups   = 5
	aimFrom     = -6 * time.Millisecond
	aimStep     = 2 * time.Millisecond
)

// fireStaggered fires the shots as aimGroups interleaved bursts, the
// first at pass+aimFrom and each next one aimStep later.
func (r *expiryRig) fireStaggered(shots []*shot, pass time.Time) {
	for g := range aimGroups {
		time.Sleep(time.Until(pass.Add(aimFrom + time.Duration(g)*aimStep)))
		for i := g; i < len(shots); i += aimGroups {
			r.fireConditional(shots[i])
		}
	}
}

// aimAtExpiryBatch makes the server expire n keys in one pass of its
// expiry timer and fires one conditional write per key (expected last
// subject sequence = the key's TTL'd message) with fireStaggered around
// that pass. A pilot key put 100 ms before the batch expires one pass
// earlier; the batch's keys have all expired by the next pass, 250 ms
// later, so they come in one pass, visited in sequence order. It returns
// the shots in that order and the pilot marker's proposal time.
func (r *expiryRig) aimAtExpiryBatch(prefix string, n int) ([]*shot, time.Time) {
	r.t.Helper()
	pilot := r.subject(prefix + ".pilot")
	pilotArm := r.arm(pilot)
	r.putTTL([]string{pilot}, "1s")
	time.Sleep(100 * time.Millisecond)

	subjects := make([]string, n)
	for i := range subjects {
		subjects[i] = r.subject(fmt.Sprintf("%s.k%04d", prefix, i))
	}
	seqs := r.putTTL(subjects, "1s")
	slices.SortFunc(subjects, func(a, b string) int { return cmp.Compare(seqs[a], seqs[b]) })
	shots := make([]*shot, n)
	for i, s := range subjects {
		shots[i] = &shot{subj: s, expected: seqs[s]}
	}
	pm, ok := r.firstMarker(pilotArm, 3*time.Second)
	if !ok {
		r.t.Fatal("pilot key never expired")
	}
	r.fireStaggered(shots, pm.ts.Add(expiryRearm))
	return shots, pm.ts
}

// markerSpan returns when the first and last markers of shots' keys were
// proposed.
func (r *expiryRig) markerSpan(shots []*shot) (first, last time.Time) {
	for _, s := range shots {
		if m, ok := r.markerOf(s.subj); ok {
			if first.IsZero() || m.ts.Before(first) {
				first = m.ts
			}
			if m.ts.After(last) {
				last = m.ts
			}
		}
	}
	return first, last
}

// outcome is what became of the shots of one attempt.
type outcome struct {
	attempts, acked, purged, nearMarker int
	rejected                            map[int]int // by JetStream error code
	purgeGaps                           []time.Duration
}

func (o *outcome) add(p outcome) {
	o.attempts += p.attempts
	o.acked += p.acked
	o.purged += p.purged
	o.nearMarker += p.nearMarker
	o.purgeGaps = append(o.purgeGaps, p.purgeGaps...)
	if o.rejected == nil {
		o.rejected = map[int]int{}
	}
	for k, v := range p.rejected {
		o.rejected[k] += v
	}
}

// settle waits for every fired shot's answer, then reads every key from
// the leader and classifies the shots.
func (r *expiryRig) settle(shots []*shot) outcome {
	r.t.Helper()
	out := outcome{rejected: map[int]int{}}
	type ackd struct {
		s   *shot
		seq uint64
	}
	var acks []ackd
	for _, s := range shots {
		if s.fut == nil {
			continue
		}
		out.attempts++
		select {
		case ack := <-s.fut.Ok():
			acks = append(acks, ackd{s, ack.Sequence})
		case err := <-s.fut.Err():
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) {
				out.rejected[int(apiErr.ErrorCode)]++
			} else {
				r.t.Fatalf("write %s: %v", s.subj, err)
			}
		case <-time.After(10 * time.Second):
			r.t.Fatalf("write %s: no answer", s.subj)
		}
	}
	out.acked = len(acks)
	// The pass is still proposing markers for a little while after the
	// last ack; let it finish so every purge has happened before we read.
	time.Sleep(300 * time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ackedSeq := map[string]uint64{}
	for _, a := range acks {
		ackedSeq[a.s.subj] = a.seq
		last, found, err := jskv.LeaderGet(ctx, r.nc, r.stream, a.s.subj)
		if err != nil {
			r.t.Fatal(err)
		}
		wts, _ := r.seenSeq(a.s.subj, a.seq)
		if mk, ok := r.markerOf(a.s.subj); ok && wts.seq != 0 && absDur(mk.ts.Sub(wts.ts)) <= 50*time.Millisecond {
			out.nearMarker++
		}
		if found && last.Seq == a.seq {
			continue
		}
		// Acknowledged, then gone: the key's last message is the MaxAge
		// marker with a higher sequence (or nothing, once it expired too).
		if found && (last.Seq < a.seq || last.Header.Get(jskv.HeaderMarkerReason) != "MaxAge") {
			r.t.Fatalf("%s: acked write %d, last message now %d with headers %v", a.s.subj, a.seq, last.Seq, last.Header)
		}
		out.purged++
		if mk, ok := r.markerOf(a.s.subj); ok && wts.seq != 0 {
			out.purgeGaps = append(out.purgeGaps, mk.ts.Sub(wts.ts))
		}
	}
	// Every key that was not written is expired: its last message is the
	// server's marker, and the marker is the rollup we rely on knowing.
	for _, s := range shots {
		if _, ok := ackedSeq[s.subj]; ok {
			continue
		}
		last, found, err := jskv.LeaderGet(ctx, r.nc, r.stream, s.subj)
		if err != nil {
			r.t.Fatal(err)
		}
		if !found {
			r.t.Fatalf("%s: expired key has no message; want its MaxAge marker", s.subj)
		}
		checkMarker(r.t, s.subj, last, s.expected)
	}
	return out
}

// checkMarker asserts that m is the server's expiry marker for a message
// with sequence below m's: what latchkey's handling of expiry assumes.
func checkMarker(t *testing.T, subj string, m *jskv.Msg, after uint64) {
	t.Helper()
	if m.Seq <= after {
		t.Fatalf("%s: last message %d, want a marker after %d", subj, m.Seq, after)
	}
	if got := m.Header.Get(jskv.HeaderMarkerReason); got != "MaxAge" {
		t.Fatalf("%s: last message %d has %s %q, want MaxAge (headers %v)", subj, m.Seq, jskv.HeaderMarkerReason, got, m.Header)
	}
	if got := m.Header.Get(hdrRollup); got != "sub" {
		t.Fatalf("%s: marker %d has %s %q, want sub: the marker no longer rolls up its subject? (headers %v)", subj, m.Seq, hdrRollup, got, m.Header)
	}
	if !jskv.IsDeleteMarker(m.Header) {
		t.Fatalf("%s: jskv.IsDeleteMarker does not recognise the server's marker %v", subj, m.Header)
	}
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// TestUpstreamTTLExpirySwallowsAckedWrite documents nats-server's
// expiry race: a write conditioned on a TTL'd message, acknowledged while
// the message expires, is purged by the server's unconditioned rollup
// marker. It asserts only the marker's shape (which latchkey relies on)
// and reports the losses; when there are none across enough attempts it
// says loudly that upstream may have fixed the race, without failing.
func TestUpstreamTTLExpirySwallowsAckedWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-node cluster for ~12 s")
	}
	const rounds, keys = 4, 500
	start := time.Now()
	r := newExpiryRig(t, "ttlrace", time.Minute) // markers outlive the test
	var total outcome
	hits := 0
	for round := range rounds {
		shots, pilot := r.aimAtExpiryBatch(fmt.Sprintf("r%d", round), keys)
		o := r.settle(shots)
		first, last := r.markerSpan(shots)
		t.Logf("round %d: %d keys; fired pilot+%s..+%s, pass proposed markers pilot+%s..+%s; %d acked, %d ACKED THEN PURGED, %d acked within 50ms of their key's marker, refused %v",
			round, keys, expiryRearm+aimFrom, expiryRearm+aimFrom+(aimGroups-1)*aimStep,
			first.Sub(pilot).Round(10*time.Microsecond), last.Sub(pilot).Round(10*time.Microsecond),
			o.acked, o.purged, o.nearMarker, o.rejected)
		if o.purged > 0 {
			hits++
		}
		total.add(o)
	}
	slices.Sort(total.purgeGaps)
	gaps := "none"
	if n := len(total.purgeGaps); n > 0 {
		gaps = fmt.Sprintf("min %s, median %s, max %s", total.purgeGaps[0], total.purgeGaps[n/2], total.purgeGaps[n-1])
	}
	t.Logf("TOTAL %d rounds x %d keys in %s: attempts %d, acked %d, ACKED THEN PURGED %d (in %d of %d rounds), acked within 50ms of their key's marker %d; marker proposed after the lost write by %s",
		rounds, keys, time.Since(start).Round(time.Millisecond), total.attempts, total.acked, total.purged, hits, rounds, total.nearMarker, gaps)
	switch {
	case total.purged > 0:
		t.Logf("nats-server still swallows acknowledged writes at TTL expiry (%d lost): latchkey's guards are still needed", total.purged)
	case total.acked >= 200:
		t.Logf("!!! UPSTREAM FIXED? 0 of %d acknowledged writes fired at the expiry instant were purged. "+
			"Check nats-server's expireMsgs/handleRemovalOrSdm and FIELD-NOTES before relaxing latchkey's guards. !!!", total.acked)
	default:
		t.Logf("only %d writes acked near expiry: too few to tell whether upstream changed (the aim may be off on this machine)", total.acked)
	}
}

// TestUpstreamMarkerExpiryIsRemoval documents how the server treats the
// expiry of messages that are themselves delete markers, which decides
// what is safe to condition a write on:
//   - its own MaxAge marker, and a KV PURGE carrying Nats-TTL, expire by
//     plain removal (isSubjectDeleteMarker in server/sdm.go), so a write
//     conditioned on them is never purged by their expiry;
//   - a KV DEL carrying Nats-TTL is not a subject delete marker to the
//     server: its expiry writes a new MaxAge rollup marker, so a write
//     conditioned on it is exposed like any TTL'd message.
func TestUpstreamMarkerExpiryIsRemoval(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-node cluster for ~6 s")
	}
	const n = 500
	// Markers live 2 s: long enough that every marker of the batch can be
	// seen and read back before the first of them expires, even on a busy
	// machine (with 1 s, some were gone before they were read).
	const markerTTL = 2 * time.Second
	r := newExpiryRig(t, "mkexp", markerTTL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// n keys expire into markers; then writes conditioned on each marker
	// are fired, the same way as at a TTL'd message, around the pass in
	// which the markers' own TTL runs out.
	subjects := make([]string, n)
	for i := range subjects {
		subjects[i] = r.subject(fmt.Sprintf("m.k%04d", i))
	}
	seqs := r.putTTL(subjects, "1s")
	markers := map[string]seenMsg{}
	for deadline := time.Now().Add(5 * time.Second); len(markers) < n && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		for _, s := range subjects {
			if m, ok := r.markerOf(s); ok {
				markers[s] = m
			}
		}
	}
	if len(markers) < n {
		t.Fatalf("only %d of %d keys expired", len(markers), n)
	}
	var first, last time.Time
	for _, s := range subjects {
		m, err := leaderGet(ctx, r, s)
		if err != nil {
			t.Fatal(err)
		}
		checkMarker(t, s, m, seqs[s])
		if m.Header.Get(jskv.HeaderTTL) == "" {
			t.Fatalf("%s: marker has no %s; it would never expire", s, jskv.HeaderTTL)
		}
		if ts := markers[s].ts; first.IsZero() || ts.Before(first) {
			first = ts
		}
		if ts := markers[s].ts; ts.After(last) {
			last = ts
		}
	}
	// The markers expire in the pass at first+1 s (those it finds due) and
	// the next one, 250 ms later (the rest): half the keys are aimed at
	// each.
	slices.SortFunc(subjects, func(a, b string) int { return cmp.Compare(markers[a].seq, markers[b].seq) })
	var early, late []*shot
	for i, s := range subjects {
		sh := &shot{subj: s, expected: markers[s].seq}
		if i%2 == 0 {
			early = append(early, sh)
		} else {
			late = append(late, sh)
		}
	}
	r.fireStaggered(early, first.Add(markerTTL))
	r.fireStaggered(late, last.Add(markerTTL+expiryRearm))
	acked := 0
	for _, sh := range append(early, late...) {
		select {
		case ack := <-sh.fut.Ok():
			acked++
			sh.expected = ack.Sequence // from now on: the write that must stay
		case <-sh.fut.Err():
			// The marker was removed first: the key is absent and the
			// expectation failed, so nothing was written.
			sh.expected = 0
		case <-time.After(10 * time.Second):
			t.Fatalf("write %s: no answer", sh.subj)
		}
	}
	time.Sleep(time.Second) // past every marker's expiry pass
	for _, sh := range append(early, late...) {
		if sh.expected == 0 {
			continue
		}
		m, found, err := jskv.LeaderGet(ctx, r.nc, r.stream, sh.subj)
		if err != nil {
			t.Fatal(err)
		}
		if !found || m.Seq != sh.expected {
			t.Fatalf("%s: write %d conditioned on the MaxAge marker was acked, but now found=%v last=%+v: the marker's expiry purged it", sh.subj, sh.expected, found, m)
		}
	}
	t.Logf("%d of %d writes conditioned on an expiring MaxAge marker acked (the rest came after its removal); none purged by the marker's expiry", acked, n)

	// A KV PURGE with Nats-TTL expires by removal: the key ends with no
	// message at all, no new marker.
	purge := r.subject("purge")
	r.putTTL([]string{purge}, "")
	if _, err := r.js.PublishMsg(ctx, &nats.Msg{Subject: purge, Header: nats.Header{
		jskv.HeaderKVOperation: {"PURGE"}, hdrRollup: {"sub"}, jskv.HeaderTTL: {"1s"}}}); err != nil {
		t.Fatal(err)
	}
	// A KV DEL with Nats-TTL is not a subject delete marker to the
	// server: its expiry writes a MaxAge rollup marker.
	del := r.subject("del")
	r.putTTL([]string{del}, "")
	delAck, err := r.js.PublishMsg(ctx, &nats.Msg{Subject: del, Header: nats.Header{
		jskv.HeaderKVOperation: {"DEL"}, jskv.HeaderTTL: {"1s"}}})
	if err != nil {
		t.Fatal(err)
	}
	var purgeGone, delMarked bool
	for deadline := time.Now().Add(4 * time.Second); time.Now().Before(deadline) && !(purgeGone && delMarked); time.Sleep(20 * time.Millisecond) {
		if _, found, err := jskv.LeaderGet(ctx, r.nc, r.stream, purge); err == nil && !found {
			purgeGone = true
		}
		if m, found, err := jskv.LeaderGet(ctx, r.nc, r.stream, del); err == nil && found && m.Seq > delAck.Sequence {
			checkMarker(t, del, m, delAck.Sequence)
			delMarked = true
		}
	}
	if !purgeGone {
		m, _, _ := jskv.LeaderGet(ctx, r.nc, r.stream, purge)
		t.Fatalf("a PURGE with Nats-TTL did not expire by removal; last message now %+v", m)
	}
	if !delMarked {
		m, _, _ := jskv.LeaderGet(ctx, r.nc, r.stream, del)
		t.Fatalf("a DEL with Nats-TTL did not expire into a MaxAge rollup marker; last message now %+v", m)
	}
}

// leaderGet is jskv.LeaderGet of a subject that must have a message.
func leaderGet(ctx context.Context, r *expiryRig, subj string) (*jskv.Msg, error) {
	m, found, err := jskv.LeaderGet(ctx, r.nc, r.stream, subj)
	if err == nil && !found {
		err = fmt.Errorf("%s: no message", subj)
	}
	return m, err
}

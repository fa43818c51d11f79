package storage

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/telemetry"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
)

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

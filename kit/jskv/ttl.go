package jskv

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// HeaderExpectedLastSubjectSeqSubject moves the subject that
// HeaderExpectedLastSubjectSeq is checked against (nats-server 2.11+).
const HeaderExpectedLastSubjectSeqSubject = "Nats-Expected-Last-Subject-Sequence-Subject"

// BarrierToken is the last subject token of the barrier messages latchkey
// writes into its buckets. '=' lies outside EncodeKey's alphabet, so a
// barrier never collides with a stored key.
const BarrierToken = "=sync"

// Expiry returns when the server will expire a message stored at ts with
// header h: ts plus its Nats-TTL, read the way nats-server reads it (a Go
// duration or whole seconds). ok is false for a message that never
// expires. The instant is on the clock of the server that stored the
// message; the server acts on it at that instant or later, never earlier.
func Expiry(ts time.Time, h nats.Header) (at time.Time, ok bool) {
	v := h.Get(HeaderTTL)
	if v == "" || v == "never" {
		return time.Time{}, false
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		n, nerr := strconv.ParseInt(v, 10, 64)
		if nerr != nil || n <= 0 {
			return time.Time{}, false
		}
		d = time.Duration(n) * time.Second
	}
	return ts.Add(d.Truncate(time.Second)), true
}

// ConfirmLast proves, by a write that a quorum of the stream commits, that
// the last message of subject had sequence seq (0: no message) at some
// instant after ConfirmLast was called. It publishes an empty message on
// barrier (a subject of the same stream that holds nothing else of
// interest) conditioned on subject's last sequence. A leader cut off from
// its quorum can still answer reads; it cannot commit this write, so a
// read confirmed this way was not answered by a deposed leader.
//
// It returns the barrier's stream sequence; ErrWrongLastSequence when the
// subject had moved on (nothing was written); apierr 503s otherwise.
func ConfirmLast(ctx context.Context, js jetstream.JetStream, barrier, subject string, seq uint64) (uint64, error) {
	h := nats.Header{}
	h.Set(HeaderExpectedLastSubjectSeq, strconv.FormatUint(seq, 10))
	h.Set(HeaderExpectedLastSubjectSeqSubject, subject)
	ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: barrier, Header: h})
	if err == nil {
		return ack.Sequence, nil
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case codeWrongLastSeq, codeWrongLastSeqConst:
			return 0, fmt.Errorf("%w: %s: %s", ErrWrongLastSequence, subject, apiErr.Description)
		case codeLastSeqNotReady:
			return 0, apierr.Errorf(apierr.ReasonJetStreamBusy, "confirming %s: %s; retry", subject, apiErr.Description)
		}
	}
	if errors.Is(err, context.Canceled) {
		return 0, err
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
		return 0, apierr.Errorf(apierr.ReasonNoQuorum, "no quorum confirmed %s in time: the stream leader may be cut off; retry", subject)
	}
	return 0, apierr.Errorf(apierr.ReasonNoQuorum, "confirming %s failed: %v", subject, err)
}

// MaxInFlightWaits bounds how often one operation waits out another
// conditional write on the same subject (WaitInFlight) before giving up.
const MaxInFlightWaits = 64

// WaitInFlight pauses after a conditional write (or a ConfirmLast) was
// refused although the subject's last sequence had not moved. nats-server
// refuses a conditional write on a subject at once while another write on
// it, or conditioned on it, is still in flight (proposed, not applied:
// jetstream_batching.go, expectedPerSubjectInProcess): a refusal that says
// nothing about the data. n is how many such waits this operation made;
// the pause grows with it up to 20 ms. A 503 when ctx ends first or n
// passes MaxInFlightWaits.
func WaitInFlight(ctx context.Context, subject string, n int) error {
	if n > MaxInFlightWaits {
		return apierr.Errorf(apierr.ReasonContention, "%s stayed busy with other writes through %d tries; retry", subject, MaxInFlightWaits)
	}
	t := time.NewTimer(min(time.Duration(n)*time.Millisecond, 20*time.Millisecond))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return apierr.Errorf(apierr.ReasonContention, "%s stayed busy with other writes until the deadline; retry", subject)
	case <-t.C:
		return nil
	}
}

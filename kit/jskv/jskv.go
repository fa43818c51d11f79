// Package jskv holds the few JetStream key-value primitives that latchkey's
// stateful services share and that nats.go's KeyValue API gets wrong for
// them:
//
//   - user names become KV key tokens through base64url, so any UTF-8
//     string (dots, wildcards, spaces) is a safe single subject token;
//   - LeaderGet reads the last message of a subject from the stream
//     leader ($JS.API.STREAM.MSG.GET), because KV Get uses direct get,
//     which followers may answer with stale data;
//   - PublishIfLast is a compare-and-set on the last sequence of one
//     subject that keeps arbitrary headers, in particular Nats-TTL, which
//     KV Update silently drops;
//   - TTLHeader rounds a millisecond TTL up to the server's one-second
//     grain, so nothing ever expires early.
package jskv

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Header names the server and the KV convention use.
const (
	// HeaderTTL is the per-message time-to-live (bucket needs LimitMarkerTTL).
	HeaderTTL = "Nats-TTL"
	// HeaderExpectedLastSubjectSeq makes a publish conditional on the last
	// sequence stored for its subject (0 = no message for the subject).
	HeaderExpectedLastSubjectSeq = "Nats-Expected-Last-Subject-Sequence"
	// HeaderKVOperation marks KV deletes ("DEL") and purges ("PURGE").
	HeaderKVOperation = "KV-Operation"
	// HeaderMarkerReason is set on markers the server writes itself, e.g.
	// when a message's TTL ran out ("MaxAge").
	HeaderMarkerReason = "Nats-Marker-Reason"
	// HeaderWriteID names one conditional write of a latchkey service. A
	// server may refuse a publish it stored (at a partition heal, or the
	// reply is lost to a timeout); the writer recognises its own write on
	// the next read by this id instead of taking it for someone else's.
	HeaderWriteID = "Latchkey-Write-Id"
)

// JetStream error codes this package interprets.
const (
	codeNoMessage           = 10037
	codeWrongLastSeq        = 10071
	codeWrongLastSeqConst   = 10164 // same failure, as reported by R>1 streams
	codeLastSeqNotReady     = 10163 // "expected last sequence per subject temporarily unavailable"
	codeMessageTooLarge     = 10054 // "message size exceeds maximum allowed" (stream or account max_payload)
	codeHeaderTooLarge      = 10097 // "header size exceeds maximum allowed of 64k", whatever max_payload is
	leaderGetDefaultTimeout = 5 * time.Second
)

// ErrWrongLastSequence reports a failed compare-and-set: the subject's last
// sequence was not the expected one, and nothing was written.
var ErrWrongLastSequence = errors.New("jskv: wrong last subject sequence")

var b64 = base64.RawURLEncoding

// EncodeKey turns an arbitrary non-empty string into a valid KV key token
// ([A-Za-z0-9_-]+). The empty string encodes to "", which is not a valid
// key: callers validate names first.
func EncodeKey(name string) string { return b64.EncodeToString([]byte(name)) }

// DecodeKey is the inverse of EncodeKey.
func DecodeKey(token string) (string, error) {
	b, err := b64.DecodeString(token)
	if err != nil {
		return "", fmt.Errorf("jskv: %q is not an encoded key: %w", token, err)
	}
	return string(b), nil
}

// Msg is a stored stream message.
type Msg struct {
	Subject string
	Seq     uint64
	Header  nats.Header
	Data    []byte
	Time    time.Time
}

type msgGetReply struct {
	Message *struct {
		Subject string    `json:"subject"`
		Seq     uint64    `json:"seq"`
		Hdrs    []byte    `json:"hdrs"` // encoding/json decodes base64 into []byte
		Data    []byte    `json:"data"`
		Time    time.Time `json:"time"`
	} `json:"message"`
	Error *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

// LeaderGet returns the last message stored on subject in stream, read
// from the stream leader, so it reflects every acknowledged write. found is
// false when the subject has no message. Delete and expiry markers are
// returned like any message; see IsDeleteMarker. Failures are apierr 503s.
func LeaderGet(ctx context.Context, nc *nats.Conn, stream, subject string) (*Msg, bool, error) {
	req, _ := json.Marshal(map[string]string{"last_by_subj": subject})
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, leaderGetDefaultTimeout)
		defer cancel()
	}
	reply, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, req)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil, false, err
		}
		return nil, false, apierr.Errorf(apierr.ReasonJetStreamRead, "reading %s from stream %s failed: %v", subject, stream, err)
	}
	var r msgGetReply
	if err := json.Unmarshal(reply.Data, &r); err != nil {
		return nil, false, apierr.Errorf(apierr.ReasonJetStreamRead, "stream %s answered a read with malformed JSON: %v", stream, err)
	}
	if r.Error != nil {
		if r.Error.ErrCode == codeNoMessage || (r.Error.ErrCode == 0 && r.Error.Code == 404) {
			return nil, false, nil
		}
		return nil, false, apierr.Errorf(apierr.ReasonJetStreamRead, "reading %s from stream %s: %s (err_code %d)",
			subject, stream, r.Error.Description, r.Error.ErrCode)
	}
	if r.Message == nil {
		return nil, false, apierr.Errorf(apierr.ReasonJetStreamRead, "stream %s answered a read without a message", stream)
	}
	m := &Msg{Subject: r.Message.Subject, Seq: r.Message.Seq, Data: r.Message.Data, Time: r.Message.Time}
	if len(r.Message.Hdrs) > 0 {
		h, err := nats.DecodeHeadersMsg(r.Message.Hdrs)
		if err != nil {
			return nil, false, apierr.Errorf(apierr.ReasonJetStreamRead, "stream %s returned unreadable headers: %v", stream, err)
		}
		m.Header = h
	}
	return m, true, nil
}

// IsDeleteMarker reports whether a stored message with header h marks its
// key as absent: a KV delete or purge, or a marker the server wrote when a
// message's TTL ran out.
func IsDeleteMarker(h nats.Header) bool {
	if h == nil {
		return false
	}
	switch h.Get(HeaderKVOperation) {
	case "DEL", "PURGE":
		return true
	}
	return h.Get(HeaderMarkerReason) != ""
}

// PublishIfLast publishes data with hdr to subject only if the last
// sequence stored for subject is expected (0: the subject has no message).
// It returns the new message's stream sequence. A mismatch is
// ErrWrongLastSequence (nothing was written); a refused size is a 413;
// other failures are apierr 503s, since whether the write happened is then
// unknown or it did not. hdr is not modified.
//
// A stream leader that has just taken over answers 10163 until it knows
// every subject's last sequence. Nothing was written then, so the publish
// is repeated with a short backoff until ctx ends (or, without a deadline,
// for notReadyPatience) instead of failing a write that would succeed a
// few milliseconds later.
func PublishIfLast(ctx context.Context, js jetstream.JetStream, subject string, data []byte, hdr nats.Header, expected uint64) (uint64, error) {
	h := make(nats.Header, len(hdr)+1)
	for k, v := range hdr {
		h[k] = append([]string(nil), v...)
	}
	h.Set(HeaderExpectedLastSubjectSeq, strconv.FormatUint(expected, 10))
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, notReadyPatience)
		defer cancel()
	}
	for wait := notReadyFirstWait; ; wait = min(2*wait, notReadyMaxWait) {
		ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: h, Data: data})
		if err == nil {
			return ack.Sequence, nil
		}
		if !lastSeqNotReady(err) {
			return 0, publishError(subject, err)
		}
		select {
		case <-ctx.Done():
			return 0, publishError(subject, err)
		case <-time.After(wait):
		}
	}
}

// Backoff for 10163 (see PublishIfLast): a leader election settles in
// milliseconds to a few seconds.
const (
	notReadyFirstWait = 5 * time.Millisecond
	notReadyMaxWait   = 200 * time.Millisecond
	notReadyPatience  = 5 * time.Second
)

// lastSeqNotReady reports JetStream 10163: the new stream leader cannot
// check an expected last subject sequence yet; nothing was written.
func lastSeqNotReady(err error) bool {
	var ae *jetstream.APIError
	return errors.As(err, &ae) && ae.ErrorCode == codeLastSeqNotReady
}

// publishError classifies a failed conditional publish.
func publishError(subject string, err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case codeWrongLastSeq, codeWrongLastSeqConst:
			return fmt.Errorf("%w: %s: %s", ErrWrongLastSequence, subject, apiErr.Description)
		case codeLastSeqNotReady:
			return apierr.Errorf(apierr.ReasonJetStreamBusy, "write to %s not checked, retry: %s", subject, apiErr.Description)
		}
	}
	if e := TooLargeError("write to "+subject, err); e != nil {
		return e
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	return apierr.Errorf(apierr.ReasonJetStreamWrite, "write to %s failed: %v", subject, err)
}

// TooLarge reports whether err is NATS or JetStream refusing a message for
// its size: the client's max_payload check (nats.ErrMaxPayload), a stream's
// "message size exceeds maximum allowed" (10054) or headers over 64 KiB
// (10097). Retrying such a write can never succeed, so it is a 413 for the
// caller to fix, not a 503 to retry.
func TooLarge(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, nats.ErrMaxPayload) {
		return true
	}
	var code int
	var ae *jetstream.APIError
	var legacy *nats.APIError
	switch {
	case errors.As(err, &ae):
		code = int(ae.ErrorCode)
	case errors.As(err, &legacy):
		code = int(legacy.ErrorCode)
	}
	return code == codeMessageTooLarge || code == codeHeaderTooLarge
}

// TooLargeError returns err as a 413 naming what was refused (e.g. "write
// to $KV.b.k") when TooLarge(err), and nil otherwise, so a caller that turns
// dependency failures into 503s can put one line in front:
//
//	if e := jskv.TooLargeError(what, err); e != nil { return e }
func TooLargeError(what string, err error) *apierr.Error {
	if !TooLarge(err) {
		return nil
	}
	return apierr.Errorf(apierr.ReasonTooLarge, "%s refused: the message is larger than NATS allows: %v", what, err)
}

// TTLHeader returns the Nats-TTL header value for a TTL of ms
// milliseconds: whole seconds, rounded up, because the server truncates
// sub-second TTLs and a lease or a TTL'd value must never end early.
func TTLHeader(ms int64) string { return strconv.FormatInt(CeilSeconds(ms), 10) + "s" }

// CeilSeconds is ms rounded up to whole seconds (at least 1).
func CeilSeconds(ms int64) int64 {
	s := (ms + 999) / 1000
	if s < 1 {
		s = 1
	}
	return s
}

// EnsureBucket creates the KV bucket of cfg, or brings an existing one to
// cfg, and returns it. A cluster that is still forming answers "no suitable
// peers", or nothing, for a while after it starts, so failures are retried
// with backoff until ctx ends; the last error is returned then.
//
// It returns only once the bucket answers a read: on a cluster the create
// is acknowledged before every replica serves direct gets, and a read in
// that gap is "no responders" (CI saw a router fail to start on it).
func EnsureBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig, log *slog.Logger) (jetstream.KeyValue, error) {
	for wait := 50 * time.Millisecond; ; wait = min(wait*2, time.Second) {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		kv, err := js.CreateOrUpdateKeyValue(actx, cfg)
		if err == nil {
			err = probeRead(actx, kv)
		}
		cancel()
		if err == nil {
			return kv, nil
		}
		log.Warn("bucket not ready yet; retrying", "bucket", cfg.Bucket, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("create bucket %s: %w", cfg.Bucket, err)
		case <-time.After(wait):
		}
	}
}

// probeKey is a key no latchkey bucket holds; reading it tells whether
// the bucket serves reads without touching anyone's data.
const probeKey = "latchkey-ready-probe"

// probeRead reads probeKey once: absent or present both mean the bucket
// serves reads.
func probeRead(ctx context.Context, kv jetstream.KeyValue) error {
	_, err := kv.Get(ctx, probeKey)
	if err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	return fmt.Errorf("read bucket %s: %w", kv.Bucket(), err)
}

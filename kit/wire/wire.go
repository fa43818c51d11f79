// Package wire is latchkey's request-reply protocol as a caller sees it:
// sending a protobuf request (Call), turning the reply or the transport's
// failure into a response or an *apierr.Error (DecodeReply,
// TransportError), the message codec, the header that carries the
// caller's deadline, and the W3C trace context in NATS headers with the
// CLIENT span of each request.
//
// It is apart from kit/service (the micro runtime) and kit/telemetry (OTLP
// exporters, Prometheus) so that the Go client links nats.go, protobuf and
// the OpenTelemetry API only: an application that adds the client gets no
// gRPC, no Prometheus and no JetStream. Keep its imports to those, apierr,
// subjects and proto; client/deps_test.go fails on anything else.
package wire

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// HeaderTimeout carries the caller's remaining patience in milliseconds, so
// a service stops working on a request nobody waits for any more.
const HeaderTimeout = "Latchkey-Timeout-Ms"

// HeaderDeadline carries the caller's deadline itself, as Unix milliseconds
// on the caller's clock. A request can reach a service long after it was
// sent: a client reconnecting holds its publishes in nats.go's reconnect
// buffer, a paused server holds what it had received. Timed from arrival,
// such a request would start fresh work nobody waits for, and a put whose
// caller saw a timeout would land after, and over, the writes that came
// next. A service refuses a request that arrives past this instant
// (kit/service), so late delivery cannot reorder a caller's writes.
const HeaderDeadline = "Latchkey-Deadline"

// SetDeadline writes ctx's deadline, if it has one, into hdr: as the
// remaining time (HeaderTimeout) and as the instant (HeaderDeadline).
func SetDeadline(ctx context.Context, hdr nats.Header) {
	if dl, ok := ctx.Deadline(); ok {
		hdr.Set(HeaderTimeout, strconv.FormatInt(time.Until(dl).Milliseconds(), 10))
		hdr.Set(HeaderDeadline, strconv.FormatInt(dl.UnixMilli(), 10))
	}
}

// RequestDeadline returns the instant a request's HeaderDeadline names.
func RequestDeadline(hdr nats.Header) (time.Time, bool) {
	v := hdr.Get(HeaderDeadline)
	if v == "" {
		return time.Time{}, false
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
}

// Call sends a protobuf request on subject and decodes the reply into resp.
// Error replies come back as *apierr.Error; a subject nobody serves and a
// timeout are ErrUnavailable, so callers can tell "retry" from "wrong".
// hdr may be nil; it is sent as is (trace context, for example). The
// request's CLIENT span comes from the global tracer provider (Tracer).
func Call(ctx context.Context, nc *nats.Conn, subject string, hdr nats.Header, req, resp proto.Message) error {
	return CallWith(ctx, Tracer(), nc, subject, hdr, req, resp)
}

// CallWith is Call with the CLIENT span started by tr. It exists for a
// process that runs several services, whose calls must be reported as the
// calling service (kit/service.Call passes kit/telemetry's tracer of ctx).
func CallWith(ctx context.Context, tr trace.Tracer, nc *nats.Conn, subject string, hdr nats.Header, req, resp proto.Message) error {
	data, err := proto.Marshal(req)
	if err != nil {
		return apierr.Errorf(apierr.ReasonEncode, "cannot encode request: %v", err)
	}
	if hdr == nil {
		hdr = nats.Header{}
	}
	SetDeadline(ctx, hdr)
	ctx, span := StartClient(ctx, tr, subject, operation(subject), hdr)
	reply, err := nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subject, Header: hdr, Data: data})
	if err != nil {
		err = TransportError(subject, err)
	} else {
		err = DecodeReply(reply, resp)
	}
	End(span, apierr.Code(err), err)
	return err
}

// operation is the last token of a subject ("get" of latchkey.kv.get).
func operation(subject string) string {
	if i := strings.LastIndexByte(subject, '.'); i >= 0 {
		return subject[i+1:]
	}
	return subject
}

// TransportError classifies a failed NATS request.
func TransportError(subject string, err error) error {
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return apierr.Errorf(apierr.ReasonNoResponders, "nothing serves %s: %v", subject, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return apierr.Errorf(apierr.ReasonTimeout, "no reply on %s in time", subject)
	case errors.Is(err, context.Canceled):
		return err
	}
	return apierr.Errorf(apierr.ReasonNATS, "request on %s failed: %v", subject, err)
}

// DecodeReply turns a reply into resp, or into the *apierr.Error it carries.
func DecodeReply(reply *nats.Msg, resp proto.Message) error {
	if code := reply.Header.Get(apierr.HeaderCode); code != "" {
		body := &pb.Error{}
		_ = proto.Unmarshal(reply.Data, body) // best effort: headers already say enough
		return apierr.FromHeaders(code, reply.Header.Get(apierr.HeaderMessage), body.GetReason())
	}
	if err := proto.Unmarshal(reply.Data, resp); err != nil {
		return apierr.Errorf(apierr.ReasonMalformedReply, "cannot read reply as %s: %v",
			resp.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

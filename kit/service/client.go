package service

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/telemetry"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// Call sends a protobuf request on subject and decodes the reply into resp.
// Error replies come back as *apierr.Error; a subject nobody serves and a
// timeout are ErrUnavailable, so callers can tell "retry" from "wrong".
// hdr may be nil; it is sent as is (trace context, for example).
func Call(ctx context.Context, nc *nats.Conn, subject string, hdr nats.Header, req, resp proto.Message) error {
	data, err := proto.Marshal(req)
	if err != nil {
		return apierr.New(apierr.ErrInvalid, "encode", "cannot encode request: %v", err)
	}
	if hdr == nil {
		hdr = nats.Header{}
	}
	if dl, ok := ctx.Deadline(); ok {
		hdr.Set(HeaderTimeout, strconv.FormatInt(time.Until(dl).Milliseconds(), 10))
	}
	ctx, span := telemetry.StartClient(ctx, subject, operation(subject), hdr)
	reply, err := nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subject, Header: hdr, Data: data})
	if err != nil {
		err = TransportError(subject, err)
	} else {
		err = DecodeReply(reply, resp)
	}
	code := 200
	if err != nil {
		code = apierr.From(err).Code()
	}
	telemetry.End(span, code, err)
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
		return apierr.Unavailable("no_responders", "nothing serves %s: %v", subject, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return apierr.Unavailable("timeout", "no reply on %s in time", subject)
	case errors.Is(err, context.Canceled):
		return err
	}
	return apierr.Unavailable("nats", "request on %s failed: %v", subject, err)
}

// DecodeReply turns a reply into resp, or into the *apierr.Error it carries.
func DecodeReply(reply *nats.Msg, resp proto.Message) error {
	if code := reply.Header.Get(apierr.HeaderCode); code != "" {
		body := &pb.Error{}
		_ = proto.Unmarshal(reply.Data, body) // best effort: headers already say enough
		return apierr.FromHeaders(code, reply.Header.Get(apierr.HeaderMessage), body.GetReason())
	}
	if err := proto.Unmarshal(reply.Data, resp); err != nil {
		return apierr.New(apierr.ErrInternal, "malformed_reply", "cannot read reply as %s: %v",
			resp.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

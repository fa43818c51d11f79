package service

import (
	"context"

	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/latchkey/latchkey/kit/wire"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// Call sends a protobuf request on subject and decodes the reply into resp
// (see wire.Call). Its CLIENT span belongs to the service ctx is marked
// with (telemetry.TracerFor), so a service's calls to another show up as
// its own even when several services share a process.
func Call(ctx context.Context, nc *nats.Conn, subject string, hdr nats.Header, req, resp proto.Message) error {
	return wire.CallWith(ctx, telemetry.TracerFor(ctx), nc, subject, hdr, req, resp)
}

// TransportError classifies a failed NATS request (see wire.TransportError).
func TransportError(subject string, err error) error { return wire.TransportError(subject, err) }

// DecodeReply turns a reply into resp, or into the *apierr.Error it carries
// (see wire.DecodeReply).
func DecodeReply(reply *nats.Msg, resp proto.Message) error { return wire.DecodeReply(reply, resp) }

package wire

import (
	"bytes"
	"strings"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// A body is protobuf unless the request says JSON (a Content-Type header of
// application/json, or a body that starts with '{'); a JSON request is
// answered in JSON, so `nats req latchkey.kv.get '{"key":"a"}'` works from
// a shell.

// ContentTypeJSON is the Content-Type value that selects protojson.
const ContentTypeJSON = "application/json"

var (
	unmarshalJSON = protojson.UnmarshalOptions{DiscardUnknown: false}
	marshalJSON   = protojson.MarshalOptions{EmitUnpopulated: false}
)

// IsJSON reports whether a request body is protojson.
func IsJSON(h nats.Header, data []byte) bool {
	if h != nil && strings.HasPrefix(h.Get("Content-Type"), ContentTypeJSON) {
		return true
	}
	return len(bytes.TrimLeft(data, " \t\r\n")) > 0 && bytes.TrimLeft(data, " \t\r\n")[0] == '{'
}

// Decode fills m from data. Malformed bodies are an apierr 400 that says
// what could not be read.
func Decode(data []byte, asJSON bool, m proto.Message) error {
	var err error
	if asJSON {
		err = unmarshalJSON.Unmarshal(data, m)
	} else {
		err = proto.Unmarshal(data, m)
	}
	if err != nil {
		kind := "protobuf"
		if asJSON {
			kind = "JSON"
		}
		return apierr.Errorf(apierr.ReasonMalformedBody, "cannot read the %s body as %s: %v",
			kind, m.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

// Encode writes m as protojson or protobuf.
func Encode(m proto.Message, asJSON bool) ([]byte, error) {
	if asJSON {
		return marshalJSON.Marshal(m)
	}
	return proto.Marshal(m)
}

package limits

import (
	"fmt"
)

// The worst case a value travels in is protojson: a get reply, or a put
// request from a shell. Around the value's base64 it carries a key (and a
// put's fence lock name), both JSON-escaped, field names, 64-bit integers
// as strings, and NATS headers.
const (
	// jsonEscapeMax: a control character in a JSON string becomes \u00XX.
	jsonEscapeMax = 6
	// valueEnvelopeBytes covers braces, quotes, field names (snake_case
	// is the longer spelling), four 64-bit integers as strings and
	// protojson's deliberately unstable spaces, with room to spare.
	valueEnvelopeBytes = 512
	// headerAllowanceBytes covers the NATS header block: Content-Type,
	// the micro error headers, trace context, Latchkey-Timeout-Ms.
	headerAllowanceBytes = 1024
	// fixedValueOverhead is everything but the value's base64.
	fixedValueOverhead = jsonEscapeMax*(MaxKeyBytes+MaxLockNameBytes) + valueEnvelopeBytes + headerAllowanceBytes
)

// ValueMessageBytes is the largest NATS message (payload plus headers) that
// carries a value of maxValue bytes: the protojson form of a get reply or a
// put request, whose base64 grows the value by 4/3, plus the largest key
// and lock name escaped and every other field. A deployment's max_payload
// must be at least this, or some valid requests could never be answered.
func ValueMessageBytes(maxValue int) int64 {
	return 4*((int64(maxValue)+2)/3) + fixedValueOverhead
}

// LargestValue is the largest max value whose ValueMessageBytes fits in
// maxPayload (0 when none does).
func LargestValue(maxPayload int64) int {
	room := maxPayload - fixedValueOverhead
	if room < 4 {
		return 0
	}
	return int(room / 4 * 3)
}

// CheckMaxValue refuses a max value (0 or less: DefaultMaxValue) whose
// messages the NATS server, with maxPayload, could not carry; its sentence
// says what would fit.
func CheckMaxValue(maxValue int, maxPayload int64) error {
	if maxValue <= 0 {
		maxValue = DefaultMaxValue
	}
	if need := ValueMessageBytes(maxValue); need > maxPayload {
		return fmt.Errorf("a max value of %d bytes needs NATS messages of up to %d bytes (its JSON get reply: base64 plus key and fields), "+
			"more than the server's max_payload of %d bytes; use at most %d, or raise max_payload",
			maxValue, need, maxPayload, LargestValue(maxPayload))
	}
	return nil
}

package broker_test

import (
	"bytes"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// Fuzz targets for the producer side of a job's stream (StreamWriter): cutting frames
// into NATS-sized pieces and publishing them.
// Run one with: go test -run '^$' -fuzz '^FuzzFramePieces$' -fuzztime 30s ./broker

// FuzzFramePieces: the pieces of a frame, joined, are the frame; none is larger than the
// limit; only an empty frame gives an empty piece (exactly one).
func FuzzFramePieces(f *testing.F) {
	f.Add([]byte("{\"a\":1}\n"), uint8(0), uint16(0))
	f.Add([]byte(""), uint8(0), uint16(3))
	f.Add([]byte("abc"), uint8(10), uint16(2))
	f.Add([]byte("0123456789"), uint8(0), uint16(9))
	f.Fuzz(func(t *testing.T, data []byte, repeat uint8, limit16 uint16) {
		frame := bytes.Repeat(data, int(repeat)+1)
		limit := int(limit16) + 1
		if len(frame)/limit > 1<<12 {
			return // millions of one-byte pieces teach nothing new and slow the fuzzer down
		}
		pieces := broker.FramePieces(frame, limit)
		if len(frame) == 0 {
			if len(pieces) != 1 || len(pieces[0]) != 0 {
				t.Fatalf("empty frame gives %d pieces", len(pieces))
			}
			return
		}
		if want := (len(frame) + limit - 1) / limit; len(pieces) != want {
			t.Fatalf("%d bytes at %d a piece: %d pieces, want %d", len(frame), limit, len(pieces), want)
		}
		for i, p := range pieces {
			if len(p) == 0 || len(p) > limit {
				t.Fatalf("piece %d has %d bytes (limit %d)", i, len(p), limit)
			}
		}
		if !bytes.Equal(bytes.Join(pieces, nil), frame) {
			t.Fatal("pieces joined are not the frame")
		}
	})
}

// FuzzStreamWriter publishes fuzzed frames (data cut at '\x00', a run of up to 1.5 MiB
// inserted into the first so that frames larger than a NATS message occur) through a
// StreamWriter on a real embedded NATS and checks what a gateway receives: Foreman-Seq 1, 2, 3…
// without gaps, the Content-Type on the first message only, every message within the
// server's max payload, the data joined equal to the frames joined, the final marker last.
//
// One NATS server serves the whole fuzz run; each input uses its own job subject.
func FuzzStreamWriter(f *testing.F) {
	f.Add([]byte("{\"a\":1}\n\x00{\"done\":true}\n"), "application/x-ndjson", uint8(0), "")
	f.Add([]byte("data: {}\n\n\x00data: [DONE]\n\n"), "text/event-stream", uint8(0), "model crashed")
	f.Add([]byte("{\"embedding\":[]}"), "", uint8(40), "")
	f.Add([]byte("\x00\x00"), " application/json\r\n", uint8(1), "x\r\nForeman-Final: done\r\n")
	b := brokertest.New(f)
	nc := b.Conn
	f.Fuzz(func(t *testing.T, data []byte, ctype string, padK uint8, errMsg string) {
		frames := bytes.Split(data, []byte{0})
		if padK > 0 {
			frames[0] = append(bytes.Repeat([]byte{'x'}, int(padK%48)<<15), frames[0]...)
		}
		id := broker.NewID()
		ch := make(chan *nats.Msg, 4096)
		sub, err := nc.ChanSubscribe(broker.StreamSubject(id), ch)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
		r := b.Store.StreamWriter(id)
		if err := r.SetContentType(ctype); err != nil {
			t.Fatal(err)
		}
		for _, fr := range frames {
			if err := r.Frame(fr); err != nil {
				t.Fatalf("publish frame: %v", err)
			}
		}
		state, status := broker.StateDone, 0
		if errMsg != "" {
			state, status = broker.StateFailed, 502
		}
		if err := r.Final(state, errMsg, status); err != nil {
			t.Fatal(err)
		}
		var got []byte
		timeout := time.After(10 * time.Second)
		for seq := 1; ; seq++ {
			var m *nats.Msg
			select {
			case m = <-ch:
			case <-timeout:
				t.Fatalf("message %d never arrived", seq)
			}
			if s := m.Header.Get(broker.HeaderSeq); s != strconv.Itoa(seq) {
				t.Fatalf("message %d has Foreman-Seq %q", seq, s)
			}
			// A long Content-Type goes out bounded (its media type alone, or an octet stream).
			if ct := m.Header.Get(broker.HeaderContentType); (seq == 1 && ct != headerValue(broker.BoundedContentType(ctype))) || (seq > 1 && ct != "") {
				t.Fatalf("message %d has Content-Type %q (sent %q)", seq, ct, ctype)
			}
			if int64(len(m.Data)) > nc.MaxPayload() {
				t.Fatalf("message %d has %d bytes, over the max payload", seq, len(m.Data))
			}
			if m.Header.Get(broker.HeaderFinal) != "" {
				if len(m.Data) != 0 {
					t.Fatal("final marker carries data")
				}
				// The target's error text cannot forge the marker's other headers.
				h := m.Header
				if h.Get(broker.HeaderFinal) != string(state) || h.Get(broker.HeaderError) != headerValue(errMsg) ||
					(status != 0) != (h.Get(broker.HeaderStatus) == "502") {
					t.Fatalf("final marker %v, sent %s %q %d", h, state, errMsg, status)
				}
				break
			}
			got = append(got, m.Data...)
		}
		if want := bytes.Join(frames, nil); !bytes.Equal(got, want) {
			t.Fatalf("received %d bytes, sent %d", len(got), len(want))
		}
	})
}

// headerValue is what a NATS header value v reads as once received: nats.go trims it and
// turns CR and LF into spaces, and the reader trims again.
func headerValue(v string) string {
	v = strings.NewReplacer("\r", " ", "\n", " ").Replace(textproto.TrimString(v))
	return textproto.TrimString(v)
}

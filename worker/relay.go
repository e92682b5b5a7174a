package worker

import (
	"strconv"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// relay publishes one attempt's response frames on the job's stream subject, the first
// with the target's Content-Type (learned before the first frame via ollama.OnResponse).
type relay struct {
	nc          *nats.Conn
	subject     string
	seq         int
	contentType string
	frames      [][]byte // every frame of the attempt, for the result
}

func newRelay(nc *nats.Conn, jobID string) *relay {
	return &relay{nc: nc, subject: broker.StreamSubject(jobID)}
}

// published reports whether any frame went out.
func (r *relay) published() bool { return r.seq > 0 }

// response records the target's Content-Type; it rides on the first frame.
func (r *relay) response(contentType string) error {
	r.contentType = contentType
	return nil
}

// frame publishes one target frame. A frame larger than a NATS message can hold (a big
// stream:false body or embedding) goes out in consecutive pieces, each with its own
// Foreman-Seq: a relay that writes the pieces in order writes the frame byte for byte.
func (r *relay) frame(f []byte) error {
	r.frames = append(r.frames, f)
	limit := max(int(r.nc.MaxPayload())-frameHeadroom, 1024)
	for _, piece := range framePieces(f, limit) {
		var hdr func(nats.Header)
		if r.seq == 0 && r.contentType != "" {
			hdr = func(h nats.Header) { h.Set(broker.HeaderContentType, r.contentType) }
		}
		if err := r.publish(piece, hdr); err != nil {
			return err
		}
	}
	return nil
}

// framePieces cuts f into consecutive pieces of at most limit bytes. An empty frame is one
// empty piece: it is still published.
func framePieces(f []byte, limit int) [][]byte {
	pieces := make([][]byte, 0, len(f)/limit+1)
	for first := true; first || len(f) > 0; first = false {
		n := min(len(f), limit)
		pieces = append(pieces, f[:n])
		f = f[n:]
	}
	return pieces
}

// frameHeadroom leaves room for the headers of a piece under the server's max payload.
const frameHeadroom = 16 << 10

func (r *relay) publish(data []byte, hdr func(nats.Header)) error {
	r.seq++
	m := nats.NewMsg(r.subject)
	m.Header.Set(broker.HeaderSeq, strconv.Itoa(r.seq))
	if hdr != nil {
		hdr(m.Header)
	}
	m.Data = data
	return r.nc.PublishMsg(m)
}

// final publishes the end-of-stream marker; status is the target's HTTP status or 0.
func (r *relay) final(state broker.State, errMsg string, status int) error {
	return r.publish(nil, func(h nats.Header) {
		h.Set(broker.HeaderFinal, string(state))
		if errMsg != "" {
			h.Set(broker.HeaderError, errMsg)
		}
		if status != 0 {
			h.Set(broker.HeaderStatus, strconv.Itoa(status))
		}
	})
}

// reset starts a new attempt's numbering (a retried async job streams again from 1).
func (r *relay) reset() {
	r.seq, r.contentType, r.frames = 0, "", nil
}

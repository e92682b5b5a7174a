package broker

import (
	"errors"
	"fmt"
	"mime"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// StreamWriter publishes a running job's answer on its stream subject: the target's
// frames, each with Foreman-Seq 1, 2, 3…, the first with Foreman-Content-Type, and at
// the end the final marker (Foreman-Final with the job's state, Foreman-Error,
// Foreman-Status). A JobFeed reads it. One StreamWriter serves one job; it is not safe
// for concurrent use.
type StreamWriter struct {
	nc          *nats.Conn
	local       *localFeeds // this process's feeds of the job, served ahead of NATS
	subject     string
	id          string
	seq         int
	contentType string
	frames      [][]byte      // every frame of the attempt, for the result
	size        int           // their bytes
	limit       int           // the most size may be (Config.MaxAnswer); 0: no bound
	readerWait  time.Duration // the longest messages are held for a reader (Config.ReaderWait)
	wait        *readerWait   // holds the messages until a reader is heard (AwaitReader); nil if not
	resend      *resender     // keeps the published messages for the reader's resends (ADR-0078); nil if not
	resendKeep  time.Duration // how long they are kept after Close; 0: resendKeep (tests set it)

	afterPublish func(*nats.Msg) // tests: runs once a message is published
}

// ErrAnswerTooLarge is (wrapped in) the error of a frame that would make an attempt's
// answer larger than Config.MaxAnswer; it is not published.
var ErrAnswerTooLarge = errors.New("answer too large")

// maxContentType bounds the Content-Type a first frame carries: a target's header of any
// length would make that frame too large to publish.
const maxContentType = 256

// StreamWriter returns the writer of job id's answer, numbering from 1.
func (s *Store) StreamWriter(id string) *StreamWriter {
	w := newStreamWriter(s.nc, id)
	w.local, w.limit, w.readerWait = &s.feeds, s.cfg.MaxAnswer, s.cfg.ReaderWait
	return w
}

func newStreamWriter(nc *nats.Conn, id string) *StreamWriter {
	return &StreamWriter{nc: nc, subject: StreamSubject(id), id: id}
}

// Limit is the most bytes an attempt's answer may have (Config.MaxAnswer); 0: no bound.
func (w *StreamWriter) Limit() int { return w.limit }

// Published reports whether any frame of this attempt went out, or is held to go out
// once its reader is heard (AwaitReader).
func (w *StreamWriter) Published() bool { return w.seq > 0 }

// Frames are the frames of this attempt as Frame got them.
func (w *StreamWriter) Frames() [][]byte { return w.frames }

// SetContentType records the target's Content-Type (learned before the first frame,
// through ollama.OnResponse); it rides on the first frame. It never fails: its error
// result fits ollama.OnResponse.
func (w *StreamWriter) SetContentType(contentType string) error {
	w.contentType = boundedContentType(contentType)
	return nil
}

// ContentType is the Content-Type SetContentType recorded (bounded), "" before it.
func (w *StreamWriter) ContentType() string { return w.contentType }

// boundedContentType is ct, or its media type alone when ct is longer than
// maxContentType, or application/octet-stream when that is too.
func boundedContentType(ct string) string {
	if len(ct) <= maxContentType {
		return ct
	}
	// The media type alone, whatever its parameters are.
	before, _, _ := strings.Cut(ct, ";")
	if mt, _, err := mime.ParseMediaType(before); err == nil && len(mt) <= maxContentType {
		return mt
	}
	return "application/octet-stream"
}

// Frame publishes one target frame. A frame larger than a NATS message can hold (a big
// stream:false body or embedding) goes out in consecutive pieces, each with its own
// Foreman-Seq: a reader that writes the pieces in order writes the frame byte for byte.
func (w *StreamWriter) Frame(f []byte) error {
	if w.limit > 0 && w.size+FrameCost(f) > w.limit {
		return fmt.Errorf("%w: the target's answer passed %d bytes", ErrAnswerTooLarge, w.limit)
	}
	w.frames = append(w.frames, f)
	w.size += FrameCost(f)
	limit := max(int(w.nc.MaxPayload())-frameHeadroom, 1024)
	pieces := framePieces(f, limit)
	for i, piece := range pieces {
		first, more := w.seq == 0 && w.contentType != "", i < len(pieces)-1
		var hdr func(nats.Header)
		if first || more {
			hdr = func(h nats.Header) {
				if first {
					h.Set(HeaderContentType, w.contentType)
				}
				if more {
					h.Set(HeaderMore, "1")
				}
			}
		}
		if err := w.publish(piece, hdr); err != nil {
			return err
		}
	}
	return nil
}

// MinFrameCost is the least a frame of an answer counts for against its bound
// (Config.MaxAnswer): a frame kept costs memory beyond its bytes (its slice, its
// allocation) and a publish of its own, so a target that sends tiny frames without end
// (a byte a line) is bounded by their number as well as their bytes: at most 1 Mi frames
// under the default 64 MiB. Ollama's frames are JSON lines or events of 100 bytes and
// more, which count as their bytes.
const MinFrameCost = 64

// FrameCost is what frame f counts for against an answer's bound: its bytes, at least
// MinFrameCost.
func FrameCost(f []byte) int { return max(len(f), MinFrameCost) }

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

func (w *StreamWriter) publish(data []byte, hdr func(nats.Header)) error {
	_, err := w.publishMsg(data, hdr)
	return err
}

// publishMsg numbers and publishes one message, or has it held while the writer waits
// for a reader (AwaitReader): held reports that.
func (w *StreamWriter) publishMsg(data []byte, hdr func(nats.Header)) (held bool, err error) {
	w.seq++
	m := nats.NewMsg(w.subject)
	m.Header.Set(HeaderSeq, strconv.Itoa(w.seq))
	if w.resend != nil {
		m.Header.Set(HeaderResends, "1")
	}
	if hdr != nil {
		hdr(m.Header)
	}
	m.Data = data
	if w.wait != nil {
		if held, err := w.wait.hold(m); held || err != nil {
			return held, err
		}
	}
	return false, w.send(m)
}

// send publishes m, numbered, and hands it to this process's feeds of the job.
func (w *StreamWriter) send(m *nats.Msg) error {
	// A feed of this process gets the message directly once it is published; told of it
	// before, it knows the copy from NATS for the echo it is, whichever comes first. A
	// message that could not be published reaches nobody: an attempt retried after it
	// streams from 1 again as if it had never begun.
	//
	// It is kept for a resend (ADR-0078) before it is published: a reader may ask from
	// it the moment it arrives, before this goroutine got back to keeping it, and that
	// ask would go unanswered. One kept whose publish failed is what a reader asking for
	// its number is owed all the same (a retried attempt's Reset forgets it).
	if w.resend != nil {
		w.resend.record(m)
	}
	feeds := w.local.feedsOf(w.id) // one look: a feed opened meanwhile was not told to expect it
	for _, f := range feeds {
		f.expect(m)
	}
	if err := w.nc.PublishMsg(m); err != nil {
		for _, f := range feeds {
			f.forget(m)
		}
		return err
	}
	if w.afterPublish != nil {
		w.afterPublish(m)
	}
	for _, f := range feeds {
		f.deliver(m)
	}
	return nil
}

// Final publishes the end-of-stream marker: the job ended in state (done, failed or
// canceled) with errMsg; status is the target's HTTP status, 0 if none. While the writer
// waits for a reader (AwaitReader), the marker waits with the messages before it, up to
// Config.ReaderWait: the terminal state written after it must not reach the caller ahead
// of them. A canceled job's does not wait: its caller is most often the one that left,
// and one still there learns of the cancel from the record.
func (w *StreamWriter) Final(state State, errMsg string, status int) error {
	held, err := w.publishMsg(nil, func(h nats.Header) {
		h.Set(HeaderFinal, string(state))
		if errMsg != "" {
			h.Set(HeaderError, errMsg)
		}
		if status != 0 {
			h.Set(HeaderStatus, strconv.Itoa(status))
		}
	})
	if !held {
		return err
	}
	if state == StateCanceled {
		w.wait.cancel()
	}
	return w.wait.outcome()
}

// Reset starts a new attempt's numbering (a retried async job streams again from 1).
func (w *StreamWriter) Reset() {
	w.seq, w.contentType, w.frames, w.size = 0, "", nil, 0
	if w.resend != nil {
		w.resend.reset()
	}
}

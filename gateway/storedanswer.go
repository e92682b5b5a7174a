package gateway

import (
	"context"
	"log/slog"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// storedAnswerTimeout bounds reading a done job's result for its caller.
const storedAnswerTimeout = 10 * time.Second

// storedAnswer is the answer a non-streamed call of done job j gets, taken from what the
// worker stored: its result (the record's own copy, ADR-0033, or the result.json
// artifact), and the Content-Type the answer goes out with. For the kinds it answers, the
// worker assembles the non-streamed answer from the target's stream as one frame, and the
// result it stores is that frame byte for byte (ADR-0050); the Content-Type is the one the
// worker gives it. Image answers carry the target's own type, which the record does not
// keep: they are not answered here. ok is false when there is nothing to answer with: a
// result the record does not hold whole (a sync job whose artifact write failed keeps a
// compacted copy only), or one larger than a feed may hold for its client
// (Config.StreamBuffer).
func (s *Server) storedAnswer(ctx context.Context, j *broker.Job, log *slog.Logger) (res []byte, ctype string, ok bool) {
	switch j.Kind {
	case broker.KindChat, broker.KindGenerate:
		ctype = "application/json; charset=utf-8" // Ollama's gin JSON
	case broker.KindOpenAIChat, broker.KindOpenAICompletion, broker.KindOpenAIResponses, broker.KindAnthropicMessages:
		ctype = "application/json" // Ollama's middlewares' json.Encoder
	default:
		return nil, "", false
	}
	var a broker.Artifact
	for _, x := range j.Artifacts {
		if x.Name == broker.ResultArtifact {
			a, ok = x, true
		}
	}
	if !ok || a.Size <= 0 || a.Size > s.cfg.StreamBuffer {
		return nil, "", false
	}
	if a.Inline {
		res, ok = j.HeldArtifact(a)
		return res, ctype, ok
	}
	ctx, cancel := context.WithTimeout(ctx, storedAnswerTimeout)
	defer cancel()
	_, res, err := s.store.GetArtifact(ctx, j.ID, broker.ResultArtifact)
	if err != nil || int64(len(res)) != a.Size {
		log.Warn("read the stored result of a job whose frames were lost", "job_id", j.ID, "err", err, "result_bytes", len(res))
		return nil, "", false
	}
	return res, ctype, true
}

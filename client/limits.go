package client

import "gitea.stevedudenhoeffer.com/steve/foreman/ollama"

// Bounds on what the client reads of a server's answer. Each lies well above the largest
// answer foreman makes, so only a server gone wrong, or one posing as foreman, reaches
// them; the read then fails with ErrAnswerTooLarge instead of filling the memory.
const (
	// maxJobAnswer bounds GET and DELETE /jobs/{id}: a record (at most 16 KiB at submit,
	// a result of up to 64 KiB inline) with its small artifacts embedded, each up to
	// 256 KiB before base64 or JSON escaping.
	maxJobAnswer = 16 << 20
	// maxListBase and maxListEntry bound a page of GET /jobs (maxListEntry per job asked
	// for: a record without its artifacts' data) and of GET /queue (maxQueueEntry per
	// waiting job asked for; the base holds the running job, the models and targets).
	maxListBase   = 4 << 20
	maxListEntry  = 256 << 10
	maxQueueEntry = 2 << 10
	// maxJobsPage and maxQueuePage are the largest limits foreman takes for GET /jobs and
	// GET /queue (it refuses a larger one with 400): a page's bound is taken for at most
	// that many jobs, so a larger limit cannot overflow it.
	maxJobsPage  = 1000
	maxQueuePage = 100_000
	// maxTargetAnswer bounds the answers foreman relays from the Ollama server: tags,
	// ps, an embedding, an artifact such as result.json. foreman reads a target's answer
	// up to ollama.MaxFrameSize.
	maxTargetAnswer = 2 * ollama.MaxFrameSize
	// maxSmallAnswer bounds a reply of a few fields, such as POST /jobs's.
	maxSmallAnswer = 64 << 10
	// maxStreamLine bounds one NDJSON line of a streamed answer: a stream:false answer is
	// one line, of at most foreman's 64 MiB bound on an attempt's answer.
	maxStreamLine = ollama.MaxFrameSize + 1<<20
	// maxStream bounds a whole streamed answer, which Chat and Generate keep to return it.
	maxStream = 4 * ollama.MaxFrameSize
)

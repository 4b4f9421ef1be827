// Command ledger-peer serves troupe's ledger routes the way a typical
// high-concurrency Go microservice would, so that troupe's figures can be
// read against a conventional stack measured on the same machine in the same
// session (benches/peers/compare.sh). It is a reference for speed, not for
// features.
//
// What it does:
//
//   - Gin in release mode: gin.New() with gin.Recovery() only (no request
//     log), bodies bound with binding tags, unknown fields refused, 64 KiB
//     body limit, troupe's status codes and error shape
//     {"error": {"code", "message", "request_id", "trace_id"}}.
//   - Accounts live in memory: 256 shards of map[string]*account, each shard
//     behind a sync.RWMutex, each account behind its own sync.Mutex and
//     holding its journal as a slice (entries[i].Seq == i+1). Deposits and
//     withdrawals lock one account; a transfer locks both in id order, so
//     two opposite transfers cannot deadlock, and moves the money all or
//     nothing under both locks.
//   - -redis URL: every change is written through before the reply, under
//     the account lock(s), as one pipelined MULTI/EXEC (HSET of the
//     account's state, HSET of the entry under its sequence number; both
//     accounts of a transfer in the same MULTI). -pg DSN: the same in one
//     Postgres transaction (database/sql + lib/pq, prepared statements,
//     the server's fsync and synchronous_commit as configured). Memory is
//     changed only once the write succeeded; a failed write answers
//     503 unavailable and changes nothing. Nothing is read back at start.
//
// What it does not do, unlike troupe: idempotency keys (a repeated transfer
// id moves money again), GET /v1/transfers/{id} (transfers are not kept),
// request deadlines, load shedding, the actor API, authentication, metrics,
// tracing, X-Request-Id echo, recovery after a crash, bounded memory (every
// entry stays in memory). Versions count the account's changes; a transfer
// leg counts one (troupe's outbox settlement may count another).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/maphash"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gin-gonic/gin/binding"
	"github.com/go-playground/validator/v10"
	"github.com/gomodule/redigo/redis"
	_ "github.com/lib/pq"
)

// Limits, as troupe's (actors/src/domain.rs, account/mod.rs, http/body.rs).
const (
	maxAmount    = 1_000_000_000_000_000     // one operation moves at most 10^15
	maxBalance   = 4_000_000_000_000_000_000 // credits beyond this are refused
	maxIDLen     = 128
	maxBodyBytes = 64 << 10
	defaultPage  = 100
	maxPage      = 1000
	shardCount   = 256
	writeTimeout = 5 * time.Second // one write-through, detached from the client
)

// ---- wire types ----

type Entry struct {
	Seq          uint64    `json:"seq"`
	Kind         string    `json:"kind"`
	Amount       uint64    `json:"amount"`
	BalanceAfter int64     `json:"balance_after"`
	TransferID   *string   `json:"transfer_id"`
	At           time.Time `json:"at"`
}

type AccountView struct {
	ID             string `json:"id"`
	Currency       string `json:"currency"`
	Balance        int64  `json:"balance"`
	OverdraftLimit uint64 `json:"overdraft_limit"`
	Version        uint64 `json:"version"`
}

type Movement struct {
	Entry   Entry  `json:"entry"`
	Balance int64  `json:"balance"`
	Version uint64 `json:"version"`
}

type EntriesPage struct {
	Entries []Entry `json:"entries"`
	Next    *uint64 `json:"next"` // the last seq of the page when more follow
}

type TransferView struct {
	ID        string    `json:"id"`
	From      string    `json:"from"`
	To        string    `json:"to"`
	Amount    uint64    `json:"amount"`
	Status    string    `json:"status"`
	Reason    string    `json:"reason,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

type openRequest struct {
	Currency       string `json:"currency" binding:"omitempty,len=3,alpha,uppercase"`
	OverdraftLimit uint64 `json:"overdraft_limit" binding:"max=1000000000000000"`
}

type amountRequest struct {
	Amount *uint64 `json:"amount" binding:"required,min=1,max=1000000000000000"`
}

type transferRequest struct {
	ID     *string `json:"id"` // generated (UUID v4) when absent, as troupe does
	From   string  `json:"from"`
	To     string  `json:"to"`
	Amount *uint64 `json:"amount" binding:"required,min=1,max=1000000000000000"`
}

// apiError is every refusal: its status, troupe's code and message, and for a
// failed transfer the transfer's fields beside "error".
type apiError struct {
	status  int
	code    string
	message string
	details *TransferView
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func refuse(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) *apiError {
	return refuse(http.StatusBadRequest, "invalid_request", format, args...)
}

func unavailable(err error) *apiError {
	return refuse(http.StatusServiceUnavailable, "unavailable", "the store refused the write: %v", err)
}

// ---- state: sharded map, one mutex per account ----

type account struct {
	mu        sync.Mutex
	id        string
	currency  string // fixed at opening
	overdraft uint64 // fixed at opening
	balance   int64
	version   uint64
	entries   []Entry
}

func (a *account) view() AccountView { // a.mu held
	return AccountView{a.id, a.currency, a.balance, a.overdraft, a.version}
}

// credited is the balance after putting amount in, or the refusal.
func (a *account) credited(amount uint64) (int64, *apiError) {
	if a.balance > maxBalance-int64(amount) {
		return 0, refuse(http.StatusUnprocessableEntity, "limit_exceeded",
			"the balance of account %s would exceed %d", a.id, int64(maxBalance))
	}
	return a.balance + int64(amount), nil
}

// debited is the balance after taking amount out, or the refusal.
func (a *account) debited(amount uint64) (int64, *apiError) {
	if a.balance-int64(amount) < -int64(a.overdraft) {
		return 0, refuse(http.StatusUnprocessableEntity, "insufficient_funds",
			"account %s has a balance of %d and an overdraft limit of %d: %d cannot be taken out",
			a.id, a.balance, a.overdraft, amount)
	}
	return a.balance - int64(amount), nil
}

// next is the entry that would take the balance to balance, and the change
// that persists it. Nothing is applied until commit.
func (a *account) next(kind string, amount uint64, balance int64, transfer *string, at time.Time) change {
	e := Entry{Seq: uint64(len(a.entries)) + 1, Kind: kind, Amount: amount,
		BalanceAfter: balance, TransferID: transfer, At: at}
	return change{id: a.id, balance: balance, version: a.version + 1, entry: &e}
}

func (a *account) commit(c change) { // a.mu held, c persisted
	a.balance, a.version = c.balance, c.version
	a.entries = append(a.entries, *c.entry)
}

type shard struct {
	mu       sync.RWMutex
	accounts map[string]*account
}

type ledger struct {
	seed    maphash.Seed
	shards  [shardCount]shard
	durable persister // nil: memory only
}

func newLedger(durable persister) *ledger {
	l := &ledger{seed: maphash.MakeSeed(), durable: durable}
	for i := range l.shards {
		l.shards[i].accounts = make(map[string]*account)
	}
	return l
}

func (l *ledger) shard(id string) *shard {
	return &l.shards[maphash.String(l.seed, id)%shardCount]
}

func (l *ledger) lookup(id string) *account {
	sh := l.shard(id)
	sh.mu.RLock()
	a := sh.accounts[id]
	sh.mu.RUnlock()
	return a
}

// persist writes the changes through, when there is a store to write to.
func (l *ledger) persist(changes ...change) *apiError {
	if l.durable == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	if err := l.durable.write(ctx, changes...); err != nil {
		log.Printf("write-through failed: %v", err)
		return unavailable(err)
	}
	return nil
}

// open creates the account, or confirms it exists with the same settings.
// Openings are rare (seeding), so the shard stays locked across the write.
func (l *ledger) open(id, currency string, overdraft uint64) (AccountView, bool, *apiError) {
	sh := l.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if a := sh.accounts[id]; a != nil {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.currency != currency || a.overdraft != overdraft {
			return AccountView{}, false, refuse(http.StatusConflict, "already_exists",
				"account %s already exists with other settings", id)
		}
		return a.view(), false, nil
	}
	a := &account{id: id, currency: currency, overdraft: overdraft, version: 1}
	if err := l.persist(change{id: id, opened: true, currency: currency, overdraft: overdraft, version: 1}); err != nil {
		return AccountView{}, false, err
	}
	sh.accounts[id] = a
	return a.view(), true, nil
}

func (l *ledger) get(id string) (AccountView, *apiError) {
	a := l.lookup(id)
	if a == nil {
		return AccountView{}, notFound(id)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.view(), nil
}

func notFound(id string) *apiError {
	return refuse(http.StatusNotFound, "not_found", "account %s does not exist", id)
}

// move is a deposit (credit) or a withdrawal (debit) on one account.
func (l *ledger) move(id, kind string, amount uint64) (Movement, *apiError) {
	a := l.lookup(id)
	if a == nil {
		return Movement{}, notFound(id)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var balance int64
	var err *apiError
	if kind == "deposit" {
		balance, err = a.credited(amount)
	} else {
		balance, err = a.debited(amount)
	}
	if err != nil {
		return Movement{}, err
	}
	c := a.next(kind, amount, balance, nil, time.Now().UTC())
	if err := l.persist(c); err != nil {
		return Movement{}, err
	}
	a.commit(c)
	return Movement{Entry: *c.entry, Balance: a.balance, Version: a.version}, nil
}

// entries is a page of the journal after seq `after`, oldest first.
func (l *ledger) entries(id string, after uint64, limit int) (EntriesPage, *apiError) {
	a := l.lookup(id)
	if a == nil {
		return EntriesPage{}, notFound(id)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	page := EntriesPage{Entries: []Entry{}}
	if after < uint64(len(a.entries)) {
		rest := a.entries[after:]
		n := len(rest)
		if n > limit {
			n = limit
		}
		page.Entries = append(page.Entries, rest[:n]...)
		if n < len(rest) {
			last := page.Entries[n-1].Seq
			page.Next = &last
		}
	}
	return page, nil
}

// transfer moves amount from one account to another, all or nothing, with
// both accounts locked in id order. Refusals answer 422 with the transfer
// (status "failed" and its reason) beside the error, checked in troupe's
// order: the debit's, then the credit's.
func (l *ledger) transfer(id, from, to string, amount uint64) (TransferView, *apiError) {
	t := TransferView{ID: id, From: from, To: to, Amount: amount, Status: "completed", CreatedAt: time.Now().UTC()}
	failed := func(code string) (TransferView, *apiError) {
		t.Status, t.Reason = "failed", code
		err := refuse(http.StatusUnprocessableEntity, code, "transfer %s failed: %s", id, code)
		err.details = &t
		return TransferView{}, err
	}
	if from == to {
		return failed("same_account")
	}
	src, dst := l.lookup(from), l.lookup(to)
	if src == nil {
		return failed("account_not_found")
	}
	unlock := lockInOrder(src, dst)
	defer unlock()
	debited, err := src.debited(amount)
	if err != nil {
		return failed(err.code)
	}
	if dst == nil {
		return failed("account_not_found")
	}
	if dst.currency != src.currency {
		return failed("currency_mismatch")
	}
	credited, err := dst.credited(amount)
	if err != nil {
		return failed(err.code)
	}
	debit := src.next("transfer_debit", amount, debited, &t.ID, t.CreatedAt)
	credit := dst.next("transfer_credit", amount, credited, &t.ID, t.CreatedAt)
	if err := l.persist(debit, credit); err != nil {
		return TransferView{}, err
	}
	src.commit(debit)
	dst.commit(credit)
	return t, nil
}

// lockInOrder locks a and b (b may be nil) in id order and returns the unlock.
func lockInOrder(a, b *account) func() {
	if b == nil {
		a.mu.Lock()
		return a.mu.Unlock
	}
	first, second := a, b
	if b.id < a.id {
		first, second = b, a
	}
	first.mu.Lock()
	second.mu.Lock()
	return func() { second.mu.Unlock(); first.mu.Unlock() }
}

// ---- write-through stores ----

// change is one account's part of a write: its new state and, for a
// movement, the entry that made it.
type change struct {
	id        string
	opened    bool // a new account: its settings too
	currency  string
	overdraft uint64
	balance   int64
	version   uint64
	entry     *Entry
}

type persister interface {
	write(ctx context.Context, changes ...change) error
	ping(ctx context.Context) error
	name() string
	close() error
}

// redisStore keeps {prefix}account:{id} (a hash of the account's state) and
// {prefix}entries:{id} (a hash of entry JSON by seq: a write retried after an
// unknown outcome overwrites rather than duplicates).
type redisStore struct {
	pool   *redis.Pool
	prefix string
}

func newRedisStore(url, prefix string) *redisStore {
	return &redisStore{prefix: prefix, pool: &redis.Pool{
		MaxIdle:     128,
		MaxActive:   256,
		Wait:        true,
		IdleTimeout: 5 * time.Minute,
		Dial: func() (redis.Conn, error) {
			return redis.DialURL(url, redis.DialConnectTimeout(2*time.Second),
				redis.DialReadTimeout(writeTimeout), redis.DialWriteTimeout(writeTimeout))
		},
	}}
}

func (r *redisStore) write(ctx context.Context, changes ...change) error {
	conn, err := r.pool.GetContext(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	cmds := [][]any{{"MULTI"}}
	for _, c := range changes {
		state := redis.Args{r.prefix + "account:" + c.id, "balance", c.balance, "version", c.version}
		if c.opened {
			state = state.Add("currency", c.currency, "overdraft_limit", c.overdraft)
		}
		cmds = append(cmds, append([]any{"HSET"}, state...))
		if c.entry != nil {
			body, err := json.Marshal(c.entry)
			if err != nil {
				return err
			}
			cmds = append(cmds, []any{"HSET", r.prefix + "entries:" + c.id, c.entry.Seq, body})
		}
	}
	for _, cmd := range cmds { // buffered: one round trip at EXEC
		if err := conn.Send(cmd[0].(string), cmd[1:]...); err != nil {
			return err
		}
	}
	replies, err := redis.Values(conn.Do("EXEC"))
	if err != nil {
		return err
	}
	for _, reply := range replies {
		if err, ok := reply.(redis.Error); ok {
			return err
		}
	}
	return nil
}

func (r *redisStore) ping(ctx context.Context) error {
	conn, err := r.pool.GetContext(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Do("PING")
	return err
}

func (r *redisStore) name() string { return "redis" }
func (r *redisStore) close() error { return r.pool.Close() }

// pgStore keeps ledger_accounts (one row per account) and ledger_entries (one
// row per entry, upserted by (account_id, seq) for the same reason as Redis).
type pgStore struct {
	db                         *sql.DB
	insertAccount, saveAccount *sql.Stmt
	saveEntry                  *sql.Stmt
}

const pgSchema = `
CREATE TABLE IF NOT EXISTS ledger_accounts (
  id text PRIMARY KEY,
  currency char(3) NOT NULL,
  overdraft_limit bigint NOT NULL,
  balance bigint NOT NULL,
  version bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_entries (
  account_id text NOT NULL REFERENCES ledger_accounts (id),
  seq bigint NOT NULL,
  kind text NOT NULL,
  amount bigint NOT NULL,
  balance_after bigint NOT NULL,
  transfer_id text,
  at timestamptz NOT NULL,
  PRIMARY KEY (account_id, seq)
)`

func newPgStore(dsn string, conns int) (*pgStore, error) {
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, pgSchema); err != nil {
		db.Close()
		return nil, err
	}
	p := &pgStore{db: db}
	for stmt, query := range map[**sql.Stmt]string{
		&p.insertAccount: `INSERT INTO ledger_accounts (id, currency, overdraft_limit, balance, version)
			VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (id) DO UPDATE SET currency = EXCLUDED.currency, overdraft_limit = EXCLUDED.overdraft_limit,
			balance = EXCLUDED.balance, version = EXCLUDED.version`,
		&p.saveAccount: `UPDATE ledger_accounts SET balance = $2, version = $3 WHERE id = $1`,
		&p.saveEntry: `INSERT INTO ledger_entries (account_id, seq, kind, amount, balance_after, transfer_id, at)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (account_id, seq) DO UPDATE SET kind = EXCLUDED.kind, amount = EXCLUDED.amount,
			balance_after = EXCLUDED.balance_after, transfer_id = EXCLUDED.transfer_id, at = EXCLUDED.at`,
	} {
		if *stmt, err = db.PrepareContext(ctx, query); err != nil {
			db.Close()
			return nil, err
		}
	}
	return p, nil
}

func (p *pgStore) write(ctx context.Context, changes ...change) error {
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // a no-op once committed
	for _, c := range changes {
		if c.opened {
			_, err = tx.StmtContext(ctx, p.insertAccount).ExecContext(ctx, c.id, c.currency, int64(c.overdraft), c.balance, int64(c.version))
		} else {
			_, err = tx.StmtContext(ctx, p.saveAccount).ExecContext(ctx, c.id, c.balance, int64(c.version))
		}
		if err != nil {
			return err
		}
		if e := c.entry; e != nil {
			_, err = tx.StmtContext(ctx, p.saveEntry).ExecContext(ctx, c.id, int64(e.Seq), e.Kind, int64(e.Amount), e.BalanceAfter, e.TransferID, e.At)
			if err != nil {
				return err
			}
		}
	}
	return tx.Commit()
}

func (p *pgStore) ping(ctx context.Context) error { return p.db.PingContext(ctx) }
func (p *pgStore) name() string                   { return "postgres" }
func (p *pgStore) close() error                   { return p.db.Close() }

// ---- HTTP ----

// validID is troupe's id rule: 1 to 128 characters of [A-Za-z0-9._:-].
func validID(id string) *apiError {
	ok := len(id) >= 1 && len(id) <= maxIDLen
	for i := 0; ok && i < len(id); i++ {
		c := id[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-'
	}
	if ok {
		return nil
	}
	if len(id) > 40 {
		id = id[:40]
	}
	return invalid("invalid id %q: ids are 1 to %d characters of [A-Za-z0-9._:-]", id, maxIDLen)
}

// bindBody reads a JSON body as troupe does: over 64 KiB is 413; empty
// stands for {}; otherwise it must be declared JSON (415) and match dst
// (400: malformed, unknown field, wrong type, a binding rule broken).
func bindBody(c *gin.Context, dst any) *apiError {
	tooLarge := refuse(http.StatusRequestEntityTooLarge, "payload_too_large", "the body is larger than %d bytes", maxBodyBytes)
	if c.Request.ContentLength > maxBodyBytes {
		return tooLarge
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, maxBodyBytes))
	if err != nil {
		var max *http.MaxBytesError
		if errors.As(err, &max) {
			return tooLarge
		}
		return invalid("could not read the body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	} else if ct := c.ContentType(); ct != "application/json" && !strings.HasSuffix(ct, "+json") {
		return refuse(http.StatusUnsupportedMediaType, "unsupported_media_type",
			"bodies must be JSON with Content-Type: application/json")
	}
	if err := binding.JSON.BindBody(body, dst); err != nil {
		return invalid("%s", describe(err))
	}
	return nil
}

// describe turns a binding error into a message naming the JSON field.
func describe(err error) string {
	var rules validator.ValidationErrors
	var wrongType *json.UnmarshalTypeError
	switch {
	case errors.As(err, &wrongType), strings.HasPrefix(err.Error(), "json: unknown field"):
		return strings.TrimPrefix(err.Error(), "json: ")
	case !errors.As(err, &rules):
		return "malformed JSON: " + err.Error()
	}
	msgs := make([]string, 0, len(rules))
	for _, r := range rules {
		switch {
		case r.Tag() == "required":
			msgs = append(msgs, fmt.Sprintf("missing field `%s`", r.Field()))
		case r.Field() == "amount":
			msgs = append(msgs, fmt.Sprintf("amount must be an integer from 1 to %d, got %v", maxAmount, r.Value()))
		case r.Field() == "currency":
			msgs = append(msgs, fmt.Sprintf("invalid currency %q: expected three upper-case letters such as \"EUR\"", r.Value()))
		default:
			msgs = append(msgs, fmt.Sprintf("%s must be an integer from 0 to %s, got %v", r.Field(), r.Param(), r.Value()))
		}
	}
	return strings.Join(msgs, "; ")
}

// fail answers err in troupe's error shape.
func fail(c *gin.Context, err *apiError) {
	body := gin.H{}
	if t := err.details; t != nil {
		body = gin.H{"id": t.ID, "from": t.From, "to": t.To, "amount": t.Amount,
			"status": t.Status, "reason": t.Reason, "created_at": t.CreatedAt}
	}
	requestID := c.GetHeader("X-Request-Id")
	if !printable(requestID) {
		requestID = newUUID()
	}
	body["error"] = gin.H{"code": err.code, "message": err.message, "request_id": requestID, "trace_id": traceID(c)}
	if err.status == http.StatusServiceUnavailable {
		c.Header("Retry-After", "1")
	}
	c.AbortWithStatusJSON(err.status, body)
}

// printable is troupe's rule for a client's X-Request-Id: 1 to 128 visible ASCII characters.
func printable(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// traceID is the caller's traceparent's trace id, or a new one.
func traceID(c *gin.Context) string {
	parts := strings.Split(c.GetHeader("traceparent"), "-")
	if len(parts) >= 3 && len(parts[1]) == 32 && parts[1] != strings.Repeat("0", 32) {
		if _, err := hex.DecodeString(parts[1]); err == nil {
			return parts[1]
		}
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// pathID is the validated :id of the route.
func pathID(c *gin.Context) (string, bool) {
	id := c.Param("id")
	if err := validID(id); err != nil {
		fail(c, err)
		return "", false
	}
	return id, true
}

type server struct{ ledger *ledger }

func (s *server) open(c *gin.Context) {
	id, ok := pathID(c)
	if !ok {
		return
	}
	var req openRequest
	if err := bindBody(c, &req); err != nil {
		fail(c, err)
		return
	}
	if req.Currency == "" {
		req.Currency = "USD"
	}
	view, created, err := s.ledger.open(id, req.Currency, req.OverdraftLimit)
	switch {
	case err != nil:
		fail(c, err)
	case created:
		c.JSON(http.StatusCreated, view)
	default:
		c.JSON(http.StatusOK, view)
	}
}

func (s *server) get(c *gin.Context) {
	id, ok := pathID(c)
	if !ok {
		return
	}
	view, err := s.ledger.get(id)
	if err != nil {
		fail(c, err)
		return
	}
	c.JSON(http.StatusOK, view)
}

// movement serves deposits and withdrawals.
func (s *server) movement(kind string) gin.HandlerFunc {
	return func(c *gin.Context) {
		id, ok := pathID(c)
		if !ok {
			return
		}
		var req amountRequest
		if err := bindBody(c, &req); err != nil {
			fail(c, err)
			return
		}
		m, err := s.ledger.move(id, kind, *req.Amount)
		if err != nil {
			fail(c, err)
			return
		}
		c.JSON(http.StatusOK, m)
	}
}

func (s *server) entries(c *gin.Context) {
	id, ok := pathID(c)
	if !ok {
		return
	}
	var after uint64
	limit := defaultPage
	for key, values := range c.Request.URL.Query() {
		value := values[len(values)-1]
		var err error
		switch key {
		case "after":
			after, err = strconv.ParseUint(value, 10, 64)
		case "limit":
			limit, err = strconv.Atoi(value)
			if err == nil && (limit < 1 || limit > maxPage) {
				fail(c, invalid("limit must be from 1 to %d, got %d", maxPage, limit))
				return
			}
		default:
			err = fmt.Errorf("unknown field `%s`, expected `after` or `limit`", key)
		}
		if err != nil {
			fail(c, invalid("bad query string: %v", err))
			return
		}
	}
	page, err := s.ledger.entries(id, after, limit)
	if err != nil {
		fail(c, err)
		return
	}
	c.JSON(http.StatusOK, page)
}

func (s *server) transfer(c *gin.Context) {
	var req transferRequest
	if err := bindBody(c, &req); err != nil {
		fail(c, err)
		return
	}
	id := newUUID()
	if req.ID != nil {
		id = *req.ID
	}
	for _, v := range []string{id, req.From, req.To} {
		if err := validID(v); err != nil {
			fail(c, err)
			return
		}
	}
	t, err := s.ledger.transfer(id, req.From, req.To, *req.Amount)
	if err != nil {
		fail(c, err)
		return
	}
	c.JSON(http.StatusCreated, t)
}

func (s *server) ready(c *gin.Context) {
	store := "memory"
	if d := s.ledger.durable; d != nil {
		store = d.name()
		ctx, cancel := context.WithTimeout(c.Request.Context(), 2*time.Second)
		defer cancel()
		if err := d.ping(ctx); err != nil {
			fail(c, unavailable(err))
			return
		}
	}
	c.JSON(http.StatusOK, gin.H{"status": "ready", "store": store})
}

func routes(s *server) *gin.Engine {
	r := gin.New()
	r.Use(gin.Recovery())
	r.HandleMethodNotAllowed = true
	r.NoRoute(func(c *gin.Context) {
		fail(c, refuse(http.StatusNotFound, "not_found", "no route for %s %s", c.Request.Method, c.Request.URL.Path))
	})
	r.NoMethod(func(c *gin.Context) {
		fail(c, refuse(http.StatusMethodNotAllowed, "method_not_allowed", "%s is not allowed on %s", c.Request.Method, c.Request.URL.Path))
	})
	r.GET("/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) })
	r.GET("/readyz", s.ready)
	accounts := r.Group("/v1/accounts/:id")
	accounts.PUT("", s.open)
	accounts.GET("", s.get)
	accounts.POST("/deposits", s.movement("deposit"))
	accounts.POST("/withdrawals", s.movement("withdrawal"))
	accounts.GET("/entries", s.entries)
	r.POST("/v1/transfers", s.transfer)
	return r
}

func main() {
	addr := flag.String("addr", "127.0.0.1:18080", "listen address")
	redisURL := flag.String("redis", "", "write every change through to this Redis (redis://host:port/db) before replying")
	redisPrefix := flag.String("redis-prefix", "ledger-peer:", "prefix of every Redis key")
	pgDSN := flag.String("pg", "", "write every change through to Postgres (lib/pq DSN) in one transaction before replying")
	pgConns := flag.Int("pg-conns", 64, "Postgres connections at most")
	flag.Parse()

	gin.SetMode(gin.ReleaseMode)
	binding.EnableDecoderDisallowUnknownFields = true
	if v, ok := binding.Validator.Engine().(*validator.Validate); ok {
		v.RegisterTagNameFunc(func(f reflect.StructField) string { // name fields as in JSON
			return strings.SplitN(f.Tag.Get("json"), ",", 2)[0]
		})
	}

	var durable persister
	switch {
	case *redisURL != "" && *pgDSN != "":
		log.Fatal("-redis and -pg are exclusive")
	case *redisURL != "":
		durable = newRedisStore(*redisURL, *redisPrefix)
	case *pgDSN != "":
		pg, err := newPgStore(*pgDSN, *pgConns)
		if err != nil {
			log.Fatalf("postgres: %v", err)
		}
		durable = pg
	}
	store := "memory"
	if durable != nil {
		store = durable.name()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := durable.ping(ctx)
		cancel()
		if err != nil {
			log.Fatalf("%s: %v", store, err)
		}
		defer durable.close()
	}

	srv := &http.Server{Addr: *addr, Handler: routes(&server{ledger: newLedger(durable)}), ReadHeaderTimeout: 10 * time.Second}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	log.Printf("ledger-peer on %s, store %s", *addr, store)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

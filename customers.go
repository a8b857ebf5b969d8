package main

import (
	"net/http"
	"strconv"
	"time"
)

// customer is a customer as the API shows it, with all of its orders.
type customer struct {
	ID        int64     `json:"id"`
	Code      string    `json:"code"`
	Name      string    `json:"name"`
	Phone     string    `json:"phone"`
	Email     *string   `json:"email"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
	Orders    []order   `json:"orders"`
}

// customerInput is the body of a create and one row of an import.
type customerInput struct {
	Code  string  `json:"code"`
	Name  string  `json:"name"`
	Phone string  `json:"phone"`
	Email *string `json:"email"`
}

// check reports every rule the input breaks; an empty e-mail means none.
func (in *customerInput) check(c *checker) {
	if d := checkCode(in.Code); d != "" {
		c.add("code", "%s", d)
	}
	if d := checkText(in.Name, 200); d != "" {
		c.add("name", "%s", d)
	}
	if d := checkE164(in.Phone); d != "" {
		c.add("phone", "%s", d)
	}
	if in.Email != nil && *in.Email == "" {
		in.Email = nil
	}
	if in.Email != nil {
		if d := checkEmail(*in.Email); d != "" {
			c.add("email", "%s", d)
		}
	}
}

// customerPatch is the body of a PATCH: absent fields stay as they are, and
// "email": null removes the e-mail address.
type customerPatch struct {
	Name  optional[string] `json:"name"`
	Phone optional[string] `json:"phone"`
	Email optional[string] `json:"email"`
}

func (p *customerPatch) check(c *checker) {
	if p.Name.Set {
		if d := checkText(p.Name.Value, 200); p.Name.Null || d != "" {
			c.add("name", "%s", or(d, "must not be null"))
		}
	}
	if p.Phone.Set {
		if d := checkE164(p.Phone.Value); p.Phone.Null || d != "" {
			c.add("phone", "%s", or(d, "must not be null"))
		}
	}
	if p.Email.Set && !p.Email.Null {
		if p.Email.Value == "" {
			p.Email.Null = true
		} else if d := checkEmail(p.Email.Value); d != "" {
			c.add("email", "%s", d)
		}
	}
	if !p.Name.Set && !p.Phone.Set && !p.Email.Set {
		c.fields = append(c.fields, fieldError{Pointer: "#", Detail: "must set at least one of name, phone, email"})
	}
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (s *server) handleCreateCustomer(w http.ResponseWriter, r *http.Request) {
	var in customerInput
	if err := decodeJSON(w, r, maxBody, &in); err != nil {
		fail(w, r, err)
		return
	}
	c := newChecker()
	in.check(c)
	if err := c.err(); err != nil {
		fail(w, r, err)
		return
	}
	created, err := s.store.createCustomer(r.Context(), in, subject(r))
	if err != nil {
		fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/customers/"+strconv.FormatInt(created.ID, 10))
	writeJSON(w, http.StatusCreated, created)
}

func (s *server) handleListCustomers(w http.ResponseWriter, r *http.Request) {
	c := newChecker()
	p := parsePage(r.URL.Query(), 'c', false, c)
	if err := c.err(); err != nil {
		fail(w, r, err)
		return
	}
	cs, err := s.store.listCustomers(r.Context(), p)
	if err != nil {
		fail(w, r, err)
		return
	}
	writePage(w, r, cs, p.limit, func(c customer) cursor { return cursor{Kind: 'c', ID: c.ID} })
}

func (s *server) handleGetCustomer(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err == nil {
		var c customer
		if c, err = s.store.getCustomer(r.Context(), id); err == nil {
			writeJSON(w, http.StatusOK, c)
			return
		}
	}
	fail(w, r, err)
}

func (s *server) handlePatchCustomer(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		fail(w, r, err)
		return
	}
	var p customerPatch
	if err := decodeJSON(w, r, maxBody, &p); err != nil {
		fail(w, r, err)
		return
	}
	c := newChecker()
	p.check(c)
	if err := c.err(); err != nil {
		fail(w, r, err)
		return
	}
	updated, err := s.store.patchCustomer(r.Context(), id, p)
	if err != nil {
		fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, updated)
}

func (s *server) handleDeleteCustomer(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err == nil {
		err = s.store.deleteCustomer(r.Context(), id)
	}
	if err != nil {
		fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// importResult answers a successful import.
type importResult struct {
	Imported int     `json:"imported"`
	IDs      []int64 `json:"ids"`
}

func (s *server) handleImportCustomers(w http.ResponseWriter, r *http.Request) {
	batch, err := readImport(w, r, []string{"code", "name", "phone", "email"}, customerFromCSV)
	if err != nil {
		fail(w, r, err)
		return
	}
	firstRow := make(map[string]int, len(batch.items))
	err = batch.validate(func(i int, in *customerInput, c *checker) {
		in.check(c)
		if first, dup := firstRow[in.Code]; dup && in.Code != "" {
			c.add("code", "repeats the code of %s", batch.where(first))
		} else {
			firstRow[in.Code] = i
		}
	})
	if err != nil {
		fail(w, r, err)
		return
	}
	ids, err := s.store.importCustomers(r.Context(), batch.items, subject(r))
	if err != nil {
		fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, importResult{Imported: len(ids), IDs: ids})
}

// customerFromCSV turns a CSV record into the input a JSON row would give;
// an empty e-mail cell means none.
func customerFromCSV(rec map[string]string) customerInput {
	in := customerInput{Code: rec["code"], Name: rec["name"], Phone: rec["phone"]}
	if e := rec["email"]; e != "" {
		in.Email = &e
	}
	return in
}

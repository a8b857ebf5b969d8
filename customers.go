package main

import (
	"net/http"
	"strconv"
	"time"
)

// embeddedOrders is how many of its newest orders a customer carries; past
// that, MoreOrders links to the rest, so that no customer makes a response
// unbounded.
const embeddedOrders = 50

// customer is a customer as the API shows it, with its newest orders.
type customer struct {
	ID         int64     `json:"id"`
	Code       string    `json:"code"`
	Name       string    `json:"name"`
	Phone      string    `json:"phone"`
	Email      *string   `json:"email"`
	CreatedBy  string    `json:"created_by"`
	CreatedAt  time.Time `json:"created_at"`
	Orders     []order   `json:"orders"`
	MoreOrders *string   `json:"more_orders"` // the list of the orders past Orders, or null
}

// embed sets the customer's orders from its newest ones, newest first: at
// most embeddedOrders of them, and a link to the rest when there are more.
func (c *customer) embed(newest []order) {
	c.Orders = append([]order{}, newest[:min(len(newest), embeddedOrders)]...) // [] when none, never null
	if len(newest) > embeddedOrders {
		more := "/v1/orders?customer_id=" + strconv.FormatInt(c.ID, 10) + "&after=" + orderCursor(c.Orders[embeddedOrders-1]).encode()
		c.MoreOrders = &more
	}
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
	c.add("code", checkCode(in.Code))
	c.add("name", checkText(in.Name, 200))
	c.add("phone", checkE164(in.Phone))
	if in.Email != nil && *in.Email == "" {
		in.Email = nil
	}
	if in.Email != nil {
		c.add("email", checkEmail(*in.Email))
	}
}

// customerPatch is the body of a PATCH: absent fields stay as they are, and
// "email": null removes the e-mail address.
type customerPatch struct {
	Name  optional[string] `json:"name"`
	Phone optional[string] `json:"phone"`
	Email optional[string] `json:"email"`
}

// check refuses a null name or phone as the rules refuse an empty one: null
// leaves Value empty.
func (p *customerPatch) check(c *checker) {
	if p.Name.Set {
		c.add("name", checkText(p.Name.Value, 200))
	}
	if p.Phone.Set {
		c.add("phone", checkE164(p.Phone.Value))
	}
	switch {
	case p.Email.Set && p.Email.Value == "":
		p.Email.Null = true // an empty address removes it, as null does
	case p.Email.Set:
		c.add("email", checkEmail(p.Email.Value))
	}
	if !p.Name.Set && !p.Phone.Set && !p.Email.Set {
		c.addError(fieldError{Pointer: "#", Detail: "must set at least one of name, phone, email"})
	}
}

func (s *server) handleCreateCustomer(w http.ResponseWriter, r *http.Request) {
	var in customerInput
	if err := decodeChecked(w, r, &in, in.check); err != nil {
		fail(w, r, err)
		return
	}
	created, err := s.store.createCustomer(r.Context(), in, subject(r))
	if err == nil {
		w.Header().Set("Location", "/v1/customers/"+strconv.FormatInt(created.ID, 10))
	}
	respond(w, r, http.StatusCreated, created, err)
}

func (s *server) handlePatchCustomer(w http.ResponseWriter, r *http.Request) {
	var p customerPatch
	id, err := pathID(r)
	if err == nil {
		err = decodeChecked(w, r, &p, p.check)
	}
	var updated customer
	if err == nil {
		updated, err = s.store.patchCustomer(r.Context(), id, p)
	}
	respond(w, r, http.StatusOK, updated, err)
}

func customerCursor(c customer) cursor { return cursor{Kind: 'c', ID: c.ID} }

func (s *server) handleImportCustomers(w http.ResponseWriter, r *http.Request) {
	serveImport(w, r, s.imports, []string{"code", "name", "phone", "email"}, customerFromCSV,
		func(batch importBatch[customerInput], c *checker) ([]int64, error) {
			firstRow := make(map[string]int, len(batch.items))
			for i := range batch.items {
				c.at(i, batch.csv)
				in := &batch.items[i]
				in.check(c)
				if first, dup := firstRow[in.Code]; dup && checkCode(in.Code) == "" {
					c.add("code", "repeats the code of "+c.row(first))
				} else {
					firstRow[in.Code] = i
				}
			}
			if err := c.err(); err != nil {
				return nil, err
			}
			return s.store.importCustomers(r.Context(), batch.items, subject(r))
		})
}

// customerFromCSV turns a CSV record into the input a JSON row would give;
// an empty e-mail cell means none.
func customerFromCSV(rec map[string]string) customerInput {
	return customerInput{Code: rec["code"], Name: rec["name"], Phone: rec["phone"], Email: cell(rec, "email")}
}

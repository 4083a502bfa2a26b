"""Tools that exercise the backend from outside (load generators); the product never imports them."""

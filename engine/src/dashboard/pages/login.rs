//! The login page: one password field for a token of role `read` or `admin`.

use maud::html;

use super::layout;

/// The login form, with `error` (why the last try failed) if any.
pub fn page(error: Option<&str>) -> String {
    layout(
        "Log in",
        None,
        "",
        &html! {
            div.login {
                h1 { "Log in" }
                p.muted { "Use a token of role " code { "read" } " or " code { "admin" } " (" code { "tessera token add" } ")." }
                @if let Some(e) = error {
                    p.error #login-error { (e) }
                }
                form #login method="post" action="/ui/login" {
                    label for="token" { "Token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    p { button #login-submit type="submit" { "Log in" } }
                }
            }
        },
    )
}

//! The pages the browser sees: sign-in, second factor, error and signed out. Rendered on the
//! server, in the user's language, with no JavaScript at all, so that the gateway can serve
//! them under the Content-Security-Policy
//!
//! ```text
//! default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';
//! frame-ancestors 'none'; base-uri 'none'
//! ```
//!
//! (with `form-action` widened to the application's origin, where the form's answer
//! redirects). The only resource is the stylesheet [`STYLESHEET`], served apart at
//! [`STYLESHEET_PATH`] and linked relatively ([`STYLESHEET_HREF`]), as forms post to relative
//! actions: every page is served at the issuer's base path (`/authorize`, `/mfa`, `/logout`
//! under it), so the pages work under an issuer with a path (`https://login.example.com/corp`)
//! without knowing it.
//!
//! Every value put into a page is escaped with [`escape`] (text and attribute values alike),
//! whatever its source: client names come from the configuration, but usernames, hints and
//! the hidden fields come from requests.
//!
//! The pages are built for assistive technology and tests alike: every field has a
//! `<label for>`, an error is a `role="alert"` paragraph that the fields point at with
//! `aria-describedby` (and mark `aria-invalid`), the page's language is set on `<html>`, and
//! the elements tests look for have stable ids (`username`, `password`, `code`, `submit`,
//! `error`).
//!
//! # Languages
//!
//! [`EN`], [`FR`] and [`DE`] are built in; [`choose`] picks one from the request's
//! `ui_locales` (OpenID Connect Core §3.1.2.1), then the browser's `Accept-Language`, then
//! English. No message may tell whether a username exists: a wrong username and a wrong
//! password read the same ([`Message::InvalidCredentials`]).

/// Where the gateway serves [`STYLESHEET`].
pub const STYLESHEET_PATH: &str = "/static/passage.css";

/// How pages link the stylesheet: relative to the page (served at the issuer's base path).
pub const STYLESHEET_HREF: &str = "static/passage.css";

/// The pages' stylesheet: readable type, contrast above WCAG AA in light and dark schemes,
/// visible focus outlines, a single column that fits a phone, and the system's colours in
/// forced-colours mode.
pub const STYLESHEET: &str = r##":root {
  color-scheme: light dark;
  --bg: #f3f4f6;
  --card: #ffffff;
  --text: #16191d;
  --muted: #4b5563;
  --border: #6b7280;
  --accent: #0b57a4;
  --accent-hover: #084582;
  --accent-text: #ffffff;
  --focus: #0b57a4;
  --error-bg: #fdecea;
  --error-text: #7f1d1d;
  --error-border: #b91c1c;
}

@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0f1216;
    --card: #1a1f26;
    --text: #e9ecef;
    --muted: #b6bec8;
    --border: #8d97a3;
    --accent: #8ab4f8;
    --accent-hover: #aecbfa;
    --accent-text: #0b1a2e;
    --focus: #8ab4f8;
    --error-bg: #3a1614;
    --error-text: #ffcdc7;
    --error-border: #f28b82;
  }
}

*,
*::before,
*::after {
  box-sizing: border-box;
}

body {
  margin: 0;
  min-height: 100vh;
  display: flex;
  align-items: center;
  justify-content: center;
  padding: 1rem;
  background: var(--bg);
  color: var(--text);
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  font-size: 1rem;
  line-height: 1.5;
}

main {
  width: 100%;
  max-width: 26rem;
  padding: 2rem 1.5rem;
  background: var(--card);
  border: 1px solid var(--border);
  border-radius: 0.5rem;
}

h1 {
  margin: 0 0 0.5rem;
  font-size: 1.5rem;
  line-height: 1.25;
}

p {
  margin: 0 0 1rem;
  overflow-wrap: anywhere;
}

.client {
  margin-bottom: 1.5rem;
  color: var(--muted);
}

.client strong {
  color: var(--text);
}

label {
  display: block;
  margin: 1rem 0 0.25rem;
  font-weight: 600;
}

.hint {
  margin: 0 0 0.5rem;
  color: var(--muted);
  font-size: 0.9375rem;
}

input {
  display: block;
  width: 100%;
  padding: 0.625rem 0.75rem;
  font: inherit;
  color: var(--text);
  background: var(--card);
  border: 1px solid var(--border);
  border-radius: 0.375rem;
}

input[aria-invalid="true"] {
  border: 2px solid var(--error-border);
}

button {
  display: block;
  width: 100%;
  margin-top: 1.5rem;
  padding: 0.75rem 1rem;
  font: inherit;
  font-weight: 600;
  color: var(--accent-text);
  background: var(--accent);
  border: 1px solid transparent;
  border-radius: 0.375rem;
  cursor: pointer;
}

button:hover {
  background: var(--accent-hover);
}

:focus-visible {
  outline: 3px solid var(--focus);
  outline-offset: 2px;
}

.error {
  padding: 0.75rem 1rem;
  color: var(--error-text);
  background: var(--error-bg);
  border-left: 4px solid var(--error-border);
  border-radius: 0.25rem;
}

@media (max-width: 30rem) {
  body {
    align-items: flex-start;
    padding: 0;
  }

  main {
    min-height: 100vh;
    border: 0;
    border-radius: 0;
  }
}

@media (forced-colors: active) {
  button {
    border-color: ButtonText;
  }

  :focus-visible {
    outline-color: Highlight;
  }
}
"##;

/// The words of the pages in one language. Every field is a complete sentence or label, so
/// that translations need not follow English word order except for "continue to" before the
/// application's name.
#[derive(Debug, PartialEq, Eq)]
pub struct Strings {
    /// The BCP 47 language tag, for `<html lang>` and `ui_locales_supported`.
    pub lang: &'static str,
    /// The sign-in page's title and heading.
    pub title_sign_in: &'static str,
    /// Put before the application's name: "Continue to" *Grafana*.
    pub continue_to: &'static str,
    /// The username field's label.
    pub username_label: &'static str,
    /// The password field's label.
    pub password_label: &'static str,
    /// The sign-in button.
    pub submit: &'static str,
    /// The second-factor page's title and heading.
    pub mfa_title: &'static str,
    /// The code field's label.
    pub mfa_label: &'static str,
    /// Under the code field's label: an authenticator code or a recovery code.
    pub mfa_hint: &'static str,
    /// The second-factor button.
    pub verify: &'static str,
    /// The error page's title and heading.
    pub error_title: &'static str,
    /// The signed-out page's title and heading.
    pub signed_out_title: &'static str,
    /// The signed-out page's text.
    pub signed_out_text: &'static str,
    /// [`Message::InvalidCredentials`]. Never says which of the two was wrong.
    pub invalid_credentials: &'static str,
    /// [`Message::LockedOut`].
    pub locked_out: &'static str,
    /// [`Message::Throttled`].
    pub throttled: &'static str,
    /// [`Message::Blocked`].
    pub blocked: &'static str,
    /// [`Message::MfaWrongCode`].
    pub mfa_wrong: &'static str,
    /// [`Message::MfaEnded`].
    pub mfa_ended: &'static str,
    /// [`Message::Unavailable`].
    pub unavailable: &'static str,
    /// [`Message::PasswordExpired`].
    pub password_expired: &'static str,
    /// [`Message::MustChangePassword`].
    pub must_change_password: &'static str,
    /// [`Message::AccountDisabled`].
    pub account_disabled: &'static str,
    /// [`Message::MfaNotEnrolled`].
    pub mfa_not_enrolled: &'static str,
    /// [`Message::FormExpired`].
    pub form_expired: &'static str,
    /// [`Message::LogoutRefused`].
    pub logout_refused: &'static str,
    /// [`Message::Generic`].
    pub generic: &'static str,
    /// The password-change page's title and heading.
    pub change_title: &'static str,
    /// The current password's label.
    pub old_password_label: &'static str,
    /// The new password's label.
    pub new_password_label: &'static str,
    /// The new password again.
    pub confirm_password_label: &'static str,
    /// The password-change button.
    pub change_submit: &'static str,
    /// [`Message::ChangeNeeded`].
    pub change_needed: &'static str,
    /// [`Message::NewPasswordRejected`].
    pub new_password_rejected: &'static str,
    /// [`Message::PasswordsDiffer`].
    pub passwords_differ: &'static str,
}

/// What a page tells the user about a refusal or a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// The username or the password is wrong (which one is never said), or the username's
    /// domain is unknown.
    InvalidCredentials,
    /// The account is locked (smart lockout, the directory's lockout, too many wrong codes).
    LockedOut,
    /// Too many attempts from here or for this user: wait.
    Throttled,
    /// A conditional access policy blocks this sign-in.
    Blocked,
    /// The second-factor code is wrong; the challenge is still open.
    MfaWrongCode,
    /// The second-factor challenge expired or ended: sign in again.
    MfaEnded,
    /// No agent or directory could answer: try again later.
    Unavailable,
    /// The password has expired.
    PasswordExpired,
    /// The password must be changed before signing in.
    MustChangePassword,
    /// The account is disabled or expired.
    AccountDisabled,
    /// A policy requires a second factor the user has not enrolled.
    MfaNotEnrolled,
    /// The form's CSRF token did not match (the form is too old, or was not Passage's).
    FormExpired,
    /// An RP-initiated logout request could not be honoured.
    LogoutRefused,
    /// Anything else.
    Generic,
    /// The password has expired or must be changed: choose a new one (password writeback).
    ChangeNeeded,
    /// The directory refused the new password.
    NewPasswordRejected,
    /// The new password and its confirmation differ.
    PasswordsDiffer,
}

impl Strings {
    /// The sentence for `message` in this language.
    pub fn message(&self, message: Message) -> &'static str {
        match message {
            Message::InvalidCredentials => self.invalid_credentials,
            Message::LockedOut => self.locked_out,
            Message::Throttled => self.throttled,
            Message::Blocked => self.blocked,
            Message::MfaWrongCode => self.mfa_wrong,
            Message::MfaEnded => self.mfa_ended,
            Message::Unavailable => self.unavailable,
            Message::PasswordExpired => self.password_expired,
            Message::MustChangePassword => self.must_change_password,
            Message::AccountDisabled => self.account_disabled,
            Message::MfaNotEnrolled => self.mfa_not_enrolled,
            Message::FormExpired => self.form_expired,
            Message::LogoutRefused => self.logout_refused,
            Message::Generic => self.generic,
            Message::ChangeNeeded => self.change_needed,
            Message::NewPasswordRejected => self.new_password_rejected,
            Message::PasswordsDiffer => self.passwords_differ,
        }
    }
}

/// English.
pub static EN: Strings = Strings {
    lang: "en",
    title_sign_in: "Sign in",
    continue_to: "Continue to",
    username_label: "Username",
    password_label: "Password",
    submit: "Sign in",
    mfa_title: "Verify your identity",
    mfa_label: "Verification code",
    mfa_hint: "Enter the 6-digit code from your authenticator app, or one of your recovery codes.",
    verify: "Verify",
    error_title: "Sign-in cannot continue",
    signed_out_title: "Signed out",
    signed_out_text: "You have been signed out. You can close this window.",
    invalid_credentials: "Your username or password is incorrect.",
    locked_out: "Your account is temporarily locked to protect it. Try again later.",
    throttled: "Too many attempts. Wait a moment, then try again.",
    blocked: "Your organisation’s access policy does not allow this sign-in.",
    mfa_wrong: "That code is not valid. Try again.",
    mfa_ended: "The verification has expired. Sign in again.",
    unavailable: "Sign-in is temporarily unavailable. Try again in a few minutes.",
    password_expired: "Your password has expired. Your organization doesn't allow you to \
                       update your password on this site. Update it according to the method \
                       recommended by your organization, or ask your admin if you need help.",
    must_change_password: "You must change your password before you can sign in. Your \
                           organization doesn't allow you to update your password on this \
                           site. Update it according to the method recommended by your \
                           organization, or ask your admin if you need help.",
    account_disabled: "Your account is disabled. Contact your administrator.",
    mfa_not_enrolled: "This sign-in requires a second verification method, but none is set up \
                       for your account. Contact your administrator.",
    form_expired: "This page has expired. Go back to the application and sign in again.",
    logout_refused: "This sign-out request is not valid.",
    generic: "Something went wrong. Try again later.",
    change_title: "Change your password",
    old_password_label: "Current password",
    new_password_label: "New password",
    confirm_password_label: "Confirm the new password",
    change_submit: "Change password",
    change_needed: "Your password has expired or must be changed. Choose a new one.",
    new_password_rejected: "The new password does not meet your organization's password \
                            policy. Choose another one.",
    passwords_differ: "The new passwords do not match.",
};

/// French.
pub static FR: Strings = Strings {
    lang: "fr",
    title_sign_in: "Connexion",
    continue_to: "Continuer vers",
    username_label: "Nom d’utilisateur",
    password_label: "Mot de passe",
    submit: "Se connecter",
    mfa_title: "Vérifiez votre identité",
    mfa_label: "Code de vérification",
    mfa_hint: "Saisissez le code à 6 chiffres de votre application d’authentification, ou l’un \
               de vos codes de récupération.",
    verify: "Vérifier",
    error_title: "La connexion ne peut pas continuer",
    signed_out_title: "Vous êtes déconnecté",
    signed_out_text: "Vous avez été déconnecté. Vous pouvez fermer cette fenêtre.",
    invalid_credentials: "Votre nom d’utilisateur ou votre mot de passe est incorrect.",
    locked_out: "Votre compte est temporairement verrouillé pour le protéger. Réessayez plus \
                 tard.",
    throttled: "Trop de tentatives. Patientez un instant, puis réessayez.",
    blocked: "La politique d’accès de votre organisation n’autorise pas cette connexion.",
    mfa_wrong: "Ce code n’est pas valide. Réessayez.",
    mfa_ended: "La vérification a expiré. Reconnectez-vous.",
    unavailable: "La connexion est temporairement indisponible. Réessayez dans quelques \
                  minutes.",
    password_expired: "Votre mot de passe a expiré. Votre organisation ne vous permet pas de \
                       le modifier sur ce site. Modifiez-le selon la méthode qu'elle \
                       recommande, ou demandez de l'aide à votre administrateur.",
    must_change_password: "Vous devez changer votre mot de passe avant de pouvoir vous \
                           connecter. Votre organisation ne vous permet pas de le modifier \
                           sur ce site. Modifiez-le selon la méthode qu'elle recommande, ou \
                           demandez de l'aide à votre administrateur.",
    account_disabled: "Votre compte est désactivé. Contactez votre administrateur.",
    mfa_not_enrolled: "Cette connexion exige une seconde méthode de vérification, mais aucune \
                       n’est configurée pour votre compte. Contactez votre administrateur.",
    form_expired: "Cette page a expiré. Revenez à l’application et reconnectez-vous.",
    logout_refused: "Cette demande de déconnexion n’est pas valide.",
    generic: "Une erreur s’est produite. Réessayez plus tard.",
    change_title: "Changez votre mot de passe",
    old_password_label: "Mot de passe actuel",
    new_password_label: "Nouveau mot de passe",
    confirm_password_label: "Confirmez le nouveau mot de passe",
    change_submit: "Changer le mot de passe",
    change_needed: "Votre mot de passe a expiré ou doit être changé. Choisissez-en un nouveau.",
    new_password_rejected: "Le nouveau mot de passe ne respecte pas la politique de votre \
                            organisation. Choisissez-en un autre.",
    passwords_differ: "Les nouveaux mots de passe ne correspondent pas.",
};

/// German.
pub static DE: Strings = Strings {
    lang: "de",
    title_sign_in: "Anmelden",
    continue_to: "Weiter zu",
    username_label: "Benutzername",
    password_label: "Passwort",
    submit: "Anmelden",
    mfa_title: "Identität bestätigen",
    mfa_label: "Bestätigungscode",
    mfa_hint: "Geben Sie den 6-stelligen Code aus Ihrer Authenticator-App oder einen Ihrer \
               Wiederherstellungscodes ein.",
    verify: "Bestätigen",
    error_title: "Die Anmeldung kann nicht fortgesetzt werden",
    signed_out_title: "Abgemeldet",
    signed_out_text: "Sie wurden abgemeldet. Sie können dieses Fenster schließen.",
    invalid_credentials: "Ihr Benutzername oder Ihr Passwort ist falsch.",
    locked_out: "Ihr Konto ist zu seinem Schutz vorübergehend gesperrt. Versuchen Sie es \
                 später erneut.",
    throttled: "Zu viele Versuche. Warten Sie einen Moment und versuchen Sie es dann erneut.",
    blocked: "Die Zugriffsrichtlinie Ihrer Organisation erlaubt diese Anmeldung nicht.",
    mfa_wrong: "Dieser Code ist ungültig. Versuchen Sie es erneut.",
    mfa_ended: "Die Bestätigung ist abgelaufen. Melden Sie sich erneut an.",
    unavailable: "Die Anmeldung ist vorübergehend nicht verfügbar. Versuchen Sie es in einigen \
                  Minuten erneut.",
    password_expired: "Ihr Passwort ist abgelaufen. Ihre Organisation erlaubt nicht, es auf \
                       dieser Website zu ändern. Ändern Sie es auf dem von Ihrer \
                       Organisation empfohlenen Weg, oder bitten Sie Ihren Administrator um \
                       Hilfe.",
    must_change_password: "Sie müssen Ihr Passwort ändern, bevor Sie sich anmelden können. \
                           Ihre Organisation erlaubt nicht, es auf dieser Website zu ändern. \
                           Ändern Sie es auf dem von Ihrer Organisation empfohlenen Weg, oder \
                           bitten Sie Ihren Administrator um Hilfe.",
    account_disabled: "Ihr Konto ist deaktiviert. Wenden Sie sich an Ihren Administrator.",
    mfa_not_enrolled: "Diese Anmeldung erfordert eine zweite Bestätigungsmethode, für Ihr \
                       Konto ist jedoch keine eingerichtet. Wenden Sie sich an Ihren \
                       Administrator.",
    form_expired: "Diese Seite ist abgelaufen. Kehren Sie zur Anwendung zurück und melden Sie \
                   sich erneut an.",
    logout_refused: "Diese Abmeldeanfrage ist ungültig.",
    generic: "Etwas ist schiefgelaufen. Versuchen Sie es später erneut.",
    change_title: "Passwort ändern",
    old_password_label: "Aktuelles Passwort",
    new_password_label: "Neues Passwort",
    confirm_password_label: "Neues Passwort bestätigen",
    change_submit: "Passwort ändern",
    change_needed: "Ihr Passwort ist abgelaufen oder muss geändert werden. Wählen Sie ein \
                    neues.",
    new_password_rejected: "Das neue Passwort entspricht nicht der Richtlinie Ihrer \
                            Organisation. Wählen Sie ein anderes.",
    passwords_differ: "Die neuen Passwörter stimmen nicht überein.",
};

/// The built-in languages, English first.
pub static LOCALES: [&Strings; 3] = [&EN, &FR, &DE];

/// The language of the pages: the first of `ui_locales` (space-separated BCP 47 tags, the
/// client's request) that is built in, else the most preferred built-in language of
/// `Accept-Language` (by q-value, then order; `q=0` means "not this one"), else English. Tags
/// match by their primary subtag (`fr-CA` is French), ignoring case.
pub fn choose(ui_locales: Option<&str>, accept_language: Option<&str>) -> &'static Strings {
    ui_locales
        .into_iter()
        .flat_map(|locales| locales.split(' '))
        .find_map(built_in)
        .or_else(|| accept_language.and_then(from_accept_language))
        .unwrap_or(&EN)
}

/// The built-in language of a BCP 47 tag.
fn built_in(tag: &str) -> Option<&'static Strings> {
    let primary = tag.trim().split(['-', '_']).next()?;
    LOCALES
        .iter()
        .copied()
        .find(|strings| strings.lang.eq_ignore_ascii_case(primary))
}

/// The most preferred built-in language of an `Accept-Language` value (RFC 9110 §12.5.4).
/// An entry with a malformed q-value is skipped.
fn from_accept_language(header: &str) -> Option<&'static Strings> {
    let mut best: Option<(u16, &'static Strings)> = None;
    for entry in header.split(',') {
        let mut parts = entry.split(';');
        let tag = parts.next().unwrap_or_default();
        let weight = parts
            .map(str::trim)
            .find_map(|param| {
                param
                    .strip_prefix("q=")
                    .or_else(|| param.strip_prefix("Q="))
            })
            .map_or(Some(1000), q_value);
        let (Some(weight), Some(strings)) = (weight, built_in(tag)) else {
            continue;
        };
        if weight > 0 && best.is_none_or(|(best_weight, _)| weight > best_weight) {
            best = Some((weight, strings));
        }
    }
    best.map(|(_, strings)| strings)
}

/// A q-value (`0`, `0.5`, `1.000`) in thousandths; `None` when malformed.
fn q_value(text: &str) -> Option<u16> {
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |value, digit| value * 10 + u16::from(digit - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// `text` made safe for HTML text and for (quoted) attribute values: `&`, `<`, `>`, `"` and
/// `'` become character references.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

/// The sign-in page.
pub struct SignInPage<'a> {
    /// The language.
    pub strings: &'static Strings,
    /// Where the form posts to.
    pub action: &'a str,
    /// The application's name ("Continue to …"); nothing is said when empty.
    pub client_name: &'a str,
    /// Hidden fields: the authorization request ([`AuthorizationRequest::to_params`]).
    ///
    /// [`AuthorizationRequest::to_params`]: crate::authorize::AuthorizationRequest::to_params
    pub hidden: &'a [(&'a str, String)],
    /// The CSRF token, for the hidden field `csrf` (the gateway sets the cookie).
    pub csrf: &'a str,
    /// The username to prefill (a `login_hint`, or what was typed before an error).
    pub username: &'a str,
    /// What went wrong with the previous attempt.
    pub error: Option<Message>,
}

/// The second-factor page.
pub struct MfaPage<'a> {
    /// The language.
    pub strings: &'static Strings,
    /// Where the form posts to.
    pub action: &'a str,
    /// The application's name ("Continue to …"); nothing is said when empty.
    pub client_name: &'a str,
    /// Hidden fields: the authorization request and the MFA challenge handle.
    pub hidden: &'a [(&'a str, String)],
    /// The CSRF token, for the hidden field `csrf`.
    pub csrf: &'a str,
    /// What went wrong with the previous code.
    pub error: Option<Message>,
}

/// The password-change page (password writeback), after a sign-in said the password expired
/// or must change.
pub struct ChangePasswordPage<'a> {
    /// The language.
    pub strings: &'static Strings,
    /// Where the form posts to.
    pub action: &'a str,
    /// The application's name ("Continue to …"); nothing is said when empty.
    pub client_name: &'a str,
    /// Hidden fields: the authorization request and the username.
    pub hidden: &'a [(&'a str, String)],
    /// The CSRF token, for the hidden field `csrf`.
    pub csrf: &'a str,
    /// Why the page is shown, or what went wrong with the previous attempt.
    pub message: Message,
}

/// The attributes a field gets when the page shows an error.
const INVALID: &str = r#" aria-invalid="true" aria-describedby="error""#;

/// The sign-in page: username and password, the request in hidden fields. The username field
/// has the focus, or, after an error with a username already there, the password field.
pub fn sign_in(page: &SignInPage<'_>) -> String {
    let strings = page.strings;
    let mut body = heading(strings.title_sign_in, strings, page.client_name);
    body.push_str(&error_paragraph(strings, page.error));
    body.push_str(&form_start(page.action, page.csrf, page.hidden));
    let invalid = if page.error.is_some() { INVALID } else { "" };
    let (username_focus, password_focus) = if page.error.is_some() && !page.username.is_empty() {
        ("", " autofocus")
    } else {
        (" autofocus", "")
    };
    body.push_str(&format!(
        r#"<label for="username">{username_label}</label>
<input id="username" name="username" type="text" value="{username}" autocomplete="username" autocapitalize="none" spellcheck="false" required{username_focus}{invalid}>
<label for="password">{password_label}</label>
<input id="password" name="password" type="password" autocomplete="current-password" required{password_focus}{invalid}>
<button id="submit" type="submit">{submit}</button>
</form>
"#,
        username_label = escape(strings.username_label),
        username = escape(page.username),
        password_label = escape(strings.password_label),
        submit = escape(strings.submit),
    ));
    document(strings, strings.title_sign_in, &body)
}

/// The second-factor page: one field, `code`, for an authenticator code or a recovery code.
///
/// The field has no `inputmode="numeric"`: recovery codes have letters, and a numeric
/// keyboard on a phone would leave no way to type them.
pub fn mfa(page: &MfaPage<'_>) -> String {
    let strings = page.strings;
    let mut body = heading(strings.mfa_title, strings, page.client_name);
    body.push_str(&error_paragraph(strings, page.error));
    body.push_str(&form_start(page.action, page.csrf, page.hidden));
    let (described_by, invalid) = if page.error.is_some() {
        ("error code-hint", r#" aria-invalid="true""#)
    } else {
        ("code-hint", "")
    };
    body.push_str(&format!(
        r#"<label for="code">{label}</label>
<p id="code-hint" class="hint">{hint}</p>
<input id="code" name="code" type="text" autocomplete="one-time-code" autocapitalize="none" spellcheck="false" required autofocus aria-describedby="{described_by}"{invalid}>
<button id="submit" type="submit">{verify}</button>
</form>
"#,
        label = escape(strings.mfa_label),
        hint = escape(strings.mfa_hint),
        verify = escape(strings.verify),
    ));
    document(strings, strings.mfa_title, &body)
}

/// The password-change page: the current password again (it is never carried in the page),
/// the new one twice.
pub fn change_password(page: &ChangePasswordPage<'_>) -> String {
    let strings = page.strings;
    let mut body = heading(strings.change_title, strings, page.client_name);
    body.push_str(&error_paragraph(strings, Some(page.message)));
    body.push_str(&form_start(page.action, page.csrf, page.hidden));
    body.push_str(&format!(
        r#"<label for="old_password">{old}</label>
<input id="old_password" name="old_password" type="password" autocomplete="current-password" required autofocus aria-describedby="error">
<label for="new_password">{new}</label>
<input id="new_password" name="new_password" type="password" autocomplete="new-password" required>
<label for="confirm_password">{confirm}</label>
<input id="confirm_password" name="confirm_password" type="password" autocomplete="new-password" required>
<button id="submit" type="submit">{submit}</button>
</form>
"#,
        old = escape(strings.old_password_label),
        new = escape(strings.new_password_label),
        confirm = escape(strings.confirm_password_label),
        submit = escape(strings.change_submit),
    ));
    document(strings, strings.change_title, &body)
}

/// A page saying the sign-in cannot go on, with `message` (an
/// [`AuthorizeError::NoRedirect`](crate::authorize::AuthorizeError::NoRedirect) message, or a
/// [`Strings::message`]).
pub fn error_page(strings: &'static Strings, message: &str) -> String {
    let body = format!(
        "<h1>{title}</h1>\n<p id=\"error\" class=\"error\">{message}</p>\n",
        title = escape(strings.error_title),
        message = escape(message),
    );
    document(strings, strings.error_title, &body)
}

/// The page shown after logging out when the application gave no (registered) address to
/// return to.
pub fn signed_out(strings: &'static Strings) -> String {
    let body = format!(
        "<h1>{title}</h1>\n<p id=\"signed-out\">{text}</p>\n",
        title = escape(strings.signed_out_title),
        text = escape(strings.signed_out_text),
    );
    document(strings, strings.signed_out_title, &body)
}

/// A whole page around `body`.
fn document(strings: &Strings, title: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="robots" content="noindex, nofollow">
<title>{title}</title>
<link rel="stylesheet" href="{STYLESHEET_HREF}">
</head>
<body>
<main>
{body}</main>
</body>
</html>
"#,
        lang = escape(strings.lang),
        title = escape(title),
    )
}

/// The heading, and the application the user signs in to.
fn heading(title: &str, strings: &Strings, client_name: &str) -> String {
    let mut html = format!("<h1>{}</h1>\n", escape(title));
    if !client_name.is_empty() {
        html.push_str(&format!(
            "<p class=\"client\">{} <strong>{}</strong></p>\n",
            escape(strings.continue_to),
            escape(client_name),
        ));
    }
    html
}

/// The error paragraph, when there is an error.
fn error_paragraph(strings: &Strings, error: Option<Message>) -> String {
    match error {
        Some(message) => format!(
            "<p id=\"error\" class=\"error\" role=\"alert\">{}</p>\n",
            escape(strings.message(message)),
        ),
        None => String::new(),
    }
}

/// The form's opening tag, its CSRF field and its hidden fields.
fn form_start(action: &str, csrf: &str, hidden: &[(&str, String)]) -> String {
    let mut html = format!(
        r#"<form method="post" action="{action}">
<input type="hidden" name="csrf" value="{csrf}">
"#,
        action = escape(action),
        csrf = escape(csrf),
    );
    for (name, value) in hidden {
        html.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
            escape(name),
            escape(value),
        ));
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL_MESSAGES: [Message; 17] = [
        Message::ChangeNeeded,
        Message::NewPasswordRejected,
        Message::PasswordsDiffer,
        Message::InvalidCredentials,
        Message::LockedOut,
        Message::Throttled,
        Message::Blocked,
        Message::MfaWrongCode,
        Message::MfaEnded,
        Message::Unavailable,
        Message::PasswordExpired,
        Message::MustChangePassword,
        Message::AccountDisabled,
        Message::MfaNotEnrolled,
        Message::FormExpired,
        Message::LogoutRefused,
        Message::Generic,
    ];

    const HOSTILE: &str = "\"><script>alert('x')</script>&amp;";

    fn hidden() -> Vec<(&'static str, String)> {
        vec![
            ("client_id", "spa".to_owned()),
            ("state", HOSTILE.to_owned()),
        ]
    }

    fn sign_in_with(error: Option<Message>, username: &str) -> String {
        let hidden = hidden();
        sign_in(&SignInPage {
            strings: &EN,
            action: "/authorize",
            client_name: "Grafana",
            hidden: &hidden,
            csrf: "csrf-token",
            username,
            error,
        })
    }

    #[test]
    fn the_change_page_asks_the_old_password_again_and_the_new_one_twice() {
        let hidden = hidden();
        let html = change_password(&ChangePasswordPage {
            strings: &EN,
            action: "password",
            client_name: "Grafana",
            hidden: &hidden,
            csrf: "csrf-token",
            message: Message::ChangeNeeded,
        });
        for field in ["old_password", "new_password", "confirm_password"] {
            assert!(
                html.contains(&format!("<label for=\"{field}\">"))
                    && html.contains(&format!(
                        "id=\"{field}\" name=\"{field}\" type=\"password\""
                    )),
                "{field}: {html}"
            );
        }
        assert!(html.contains("autocomplete=\"new-password\""));
        assert!(html.contains("role=\"alert\""), "the reason is announced");
        assert!(!html.contains("<script>"), "hidden values escaped");
    }

    #[test]
    fn the_sign_in_page_has_its_fields_labels_and_ids() {
        let html = sign_in_with(None, "");
        assert!(
            html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"),
            "{html}"
        );
        for expected in [
            "<main>",
            "<title>Sign in</title>",
            r#"<link rel="stylesheet" href="static/passage.css">"#,
            "<h1>Sign in</h1>",
            "Continue to <strong>Grafana</strong>",
            r#"<form method="post" action="/authorize">"#,
            r#"<input type="hidden" name="csrf" value="csrf-token">"#,
            r#"<input type="hidden" name="client_id" value="spa">"#,
            r#"<label for="username">Username</label>"#,
            r#"<label for="password">Password</label>"#,
            r#"id="username" name="username" type="text" value="" autocomplete="username""#,
            r#"id="password" name="password" type="password" autocomplete="current-password" required"#,
            r#"<button id="submit" type="submit">Sign in</button>"#,
        ] {
            assert!(html.contains(expected), "{expected}\n{html}");
        }
        assert!(!html.contains("id=\"error\""), "{html}");
        assert!(!html.contains("aria-invalid"), "{html}");
        assert!(html.contains("required autofocus>"), "{html}");
    }

    #[test]
    fn an_error_is_announced_and_marks_the_fields() {
        let html = sign_in_with(Some(Message::InvalidCredentials), "ada@example.com");
        assert!(
            html.contains(
                r#"<p id="error" class="error" role="alert">Your username or password is incorrect.</p>"#
            ),
            "{html}"
        );
        assert_eq!(
            html.matches(r#"aria-invalid="true" aria-describedby="error""#)
                .count(),
            2,
            "{html}"
        );
        assert!(html.contains(r#"value="ada@example.com""#), "{html}");
        // The focus goes to the password, the username being there.
        assert!(
            html.contains(r#"autocomplete="current-password" required autofocus"#),
            "{html}"
        );
        assert_eq!(html.matches("autofocus").count(), 1, "{html}");
    }

    #[test]
    fn every_interpolated_value_is_escaped() {
        let hidden = [(HOSTILE, HOSTILE.to_owned())];
        let page = SignInPage {
            strings: &EN,
            action: HOSTILE,
            client_name: HOSTILE,
            hidden: &hidden,
            csrf: HOSTILE,
            username: HOSTILE,
            error: None,
        };
        let escaped = "&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;amp;";
        for html in [
            sign_in(&page),
            mfa(&MfaPage {
                strings: &FR,
                action: HOSTILE,
                client_name: HOSTILE,
                hidden: &hidden,
                csrf: HOSTILE,
                error: Some(Message::MfaWrongCode),
            }),
            error_page(&DE, HOSTILE),
        ] {
            assert!(!html.contains("<script"), "{html}");
            assert!(!html.contains(HOSTILE), "{html}");
            assert!(html.contains(escaped), "{html}");
        }
    }

    #[test]
    fn the_mfa_page_asks_for_a_one_time_or_recovery_code() {
        let hidden = [("mfa_challenge", "h4ndle".to_owned())];
        let page = MfaPage {
            strings: &EN,
            action: "/authorize/mfa",
            client_name: "",
            hidden: &hidden,
            csrf: "t",
            error: None,
        };
        let html = mfa(&page);
        for expected in [
            "<title>Verify your identity</title>",
            r#"<form method="post" action="/authorize/mfa">"#,
            r#"<input type="hidden" name="mfa_challenge" value="h4ndle">"#,
            r#"<label for="code">Verification code</label>"#,
            r#"<p id="code-hint" class="hint">"#,
            "recovery codes",
            r#"id="code" name="code" type="text" autocomplete="one-time-code""#,
            r#"aria-describedby="code-hint">"#,
            r#"<button id="submit" type="submit">Verify</button>"#,
        ] {
            assert!(html.contains(expected), "{expected}\n{html}");
        }
        assert!(!html.contains("class=\"client\""), "{html}");
        let html = mfa(&MfaPage {
            error: Some(Message::MfaWrongCode),
            ..page
        });
        assert!(html.contains(r#"role="alert">That code is not valid. Try again.</p>"#));
        assert!(html.contains(r#"aria-describedby="error code-hint" aria-invalid="true">"#));
    }

    #[test]
    fn the_error_and_signed_out_pages() {
        let html = error_page(&FR, "Unknown client_id.");
        assert!(html.contains("<html lang=\"fr\">"));
        assert!(html.contains("<h1>La connexion ne peut pas continuer</h1>"));
        assert!(html.contains("<p id=\"error\" class=\"error\">Unknown client_id.</p>"));
        let html = signed_out(&DE);
        assert!(html.contains("<html lang=\"de\">"));
        assert!(html.contains("<h1>Abgemeldet</h1>"));
    }

    #[test]
    fn no_page_has_a_script_or_an_inline_style() {
        let hidden = hidden();
        for strings in LOCALES {
            let pages = [
                sign_in(&SignInPage {
                    strings,
                    action: "/authorize",
                    client_name: "App",
                    hidden: &hidden,
                    csrf: "t",
                    username: "u",
                    error: Some(Message::Throttled),
                }),
                error_page(strings, strings.generic),
                signed_out(strings),
            ];
            for html in pages {
                for forbidden in [
                    "<script",
                    "style=",
                    "javascript:",
                    "<img",
                    "onclick",
                    "onload",
                    "onerror",
                    "onsubmit",
                ] {
                    assert!(!html.contains(forbidden), "{forbidden}\n{html}");
                }
            }
        }
    }

    #[test]
    fn every_message_is_translated_and_credentials_never_say_which() {
        for strings in LOCALES {
            for message in ALL_MESSAGES {
                let text = strings.message(message);
                assert!(text.ends_with('.'), "{}: {message:?}: {text}", strings.lang);
            }
            if strings.lang != "en" {
                for message in ALL_MESSAGES {
                    assert_ne!(strings.message(message), EN.message(message), "{message:?}");
                }
            }
        }
        assert_eq!(
            EN.message(Message::InvalidCredentials),
            "Your username or password is incorrect."
        );
        assert_eq!(LOCALES.map(|s| s.lang), ["en", "fr", "de"]);
    }

    #[test]
    fn ui_locales_come_first() {
        assert_eq!(choose(Some("fr"), Some("de")).lang, "fr");
        assert_eq!(choose(Some("es fr-CA de"), None).lang, "fr");
        assert_eq!(choose(Some("DE-at"), None).lang, "de");
        assert_eq!(choose(Some("es it"), Some("de")).lang, "de");
        assert_eq!(choose(Some(""), Some("fr")).lang, "fr");
    }

    #[test]
    fn accept_language_by_weight_then_order() {
        assert_eq!(choose(None, Some("de-CH, fr;q=0.9, en;q=0.8")).lang, "de");
        assert_eq!(choose(None, Some("es, fr;q=0.5, de;q=0.7")).lang, "de");
        assert_eq!(choose(None, Some("fr;q=0.5, de;q=0.5")).lang, "fr");
        assert_eq!(choose(None, Some("en;q=0.1, fr")).lang, "fr");
        // q=0 means "not this one".
        assert_eq!(choose(None, Some("fr;q=0, es")).lang, "en");
        // Malformed weights are skipped.
        assert_eq!(choose(None, Some("fr;q=2, de;q=abc, en;q=0.3")).lang, "en");
        assert_eq!(choose(None, Some("de ; Q=0.4 , fr;q=0.3")).lang, "de");
        assert_eq!(choose(None, Some("*")).lang, "en");
        assert_eq!(choose(None, Some("")).lang, "en");
        assert_eq!(choose(None, None).lang, "en");
    }

    #[test]
    fn q_values() {
        for (text, value) in [
            ("0", 0),
            ("0.5", 500),
            ("0.123", 123),
            ("1", 1000),
            ("1.000", 1000),
            ("0.", 0),
        ] {
            assert_eq!(q_value(text), Some(value), "{text}");
        }
        for text in ["", "2", "1.001", "0.1234", "-1", "0.a", ".5", "01"] {
            assert_eq!(q_value(text), None, "{text}");
        }
    }

    #[test]
    fn the_stylesheet_shows_focus_and_follows_the_colour_scheme() {
        assert!(STYLESHEET.contains(":focus-visible"));
        assert!(STYLESHEET.contains("@media (prefers-color-scheme: dark)"));
        assert!(STYLESHEET.contains("@media (forced-colors: active)"));
        assert_eq!(
            STYLESHEET.matches('{').count(),
            STYLESHEET.matches('}').count()
        );
    }

    /// Undoes [`escape`], for the property below.
    fn unescape(text: &str) -> String {
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    }

    proptest! {
        #[test]
        fn escaped_text_has_no_markup_and_reads_back(text in any::<String>()) {
            let escaped = escape(&text);
            prop_assert!(!escaped.contains(['<', '>', '"', '\'']));
            for (i, _) in escaped.match_indices('&') {
                let rest = &escaped[i..];
                prop_assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                        .iter()
                        .any(|entity| rest.starts_with(entity))
                );
            }
            prop_assert_eq!(unescape(&escaped), text);
        }
    }
}

#version 330 core
// The engine's built-in lit shader, fragment stage: Lambert diffuse plus ambient, times
// the material's colour and texture (a white texel when it has none).

in vec3 v_normal;
in vec3 v_world_position;
in vec2 v_texcoord;

uniform vec4 u_color;            // Material.color
uniform sampler2D u_texture;     // Material.texture
uniform vec3 u_light_direction;  // world space, unit length, pointing towards the light
uniform float u_ambient;         // 0..1, light reaching faces turned away

out vec4 frag_color;

void main() {
    vec4 base = u_color * texture(u_texture, v_texcoord);
    float diffuse = max(dot(normalize(v_normal), u_light_direction), 0.0);
    float light = u_ambient + (1.0 - u_ambient) * diffuse;
    frag_color = vec4(base.rgb * light, base.a);
}
